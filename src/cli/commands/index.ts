/**
 * The `mmsim` command registry: one file per service. A new service's
 * commands go in their own file and get one line here.
 */
import { CommandRegistry } from "../registry.js";
import { addressSpaceCommands } from "./address-space.js";
import { deviceCommands } from "./device.js";
import { faultCommands } from "./fault.js";
import { gupCommands } from "./gup.js";
import { healthCommands } from "./health.js";
import { inspectCommands } from "./inspect.js";
import { memoryCommands } from "./memory.js";
import { sessionCommands } from "./session.js";
import { systemCommands } from "./system.js";

export const COMMANDS = new CommandRegistry();
COMMANDS.add(...sessionCommands);
COMMANDS.add(...addressSpaceCommands);
COMMANDS.add(...faultCommands);
COMMANDS.add(...memoryCommands);
COMMANDS.add(...deviceCommands);
COMMANDS.add(...gupCommands);
COMMANDS.add(...inspectCommands);
COMMANDS.add(...systemCommands);
COMMANDS.add(...healthCommands);
