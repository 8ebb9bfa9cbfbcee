/**
 * After every test, every daemon the test file started must pass
 * CheckInvariants: the kernel's "is the MM still consistent?" question.
 */
import { afterEach } from "vitest";
import { liveDaemons } from "../helpers/daemon.js";

afterEach(async () => {
  for (const d of liveDaemons) await d.checkInvariants();
});
