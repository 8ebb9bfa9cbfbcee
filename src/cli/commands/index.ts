/**
 * The `mmsim` command registry: one file per service. A new service's
 * commands go in their own file and get one line here.
 */
import { CommandRegistry } from "../registry.js";
import { addressSpaceCommands } from "./address-space.js";
import { deviceCommands } from "./device.js";
import { dmirrorCommands } from "./dmirror.js";
import { faultCommands } from "./fault.js";
import { gupCommands } from "./gup.js";
import { healthCommands } from "./health.js";
import { inspectCommands } from "./inspect.js";
import { memoryCommands } from "./memory.js";
import { notifierCommands } from "./notifier.js";
import { sessionCommands } from "./session.js";
import { snapshotCommands } from "./snapshot.js";
import { systemCommands } from "./system.js";
import { traceCommands } from "./trace.js";

export const COMMANDS = new CommandRegistry();
COMMANDS.add(...sessionCommands);
COMMANDS.add(...addressSpaceCommands);
COMMANDS.add(...faultCommands);
COMMANDS.add(...memoryCommands);
COMMANDS.add(...deviceCommands);
COMMANDS.add(...gupCommands);
COMMANDS.add(...notifierCommands);
COMMANDS.add(...dmirrorCommands);
COMMANDS.add(...inspectCommands);
COMMANDS.add(...systemCommands);
COMMANDS.add(...traceCommands);
COMMANDS.add(...snapshotCommands);
COMMANDS.add(...healthCommands);
