/** Every workload, in the order the table prints them. */
import type { Workload } from "../lib/types.js";
import { mem } from "./mem.js";
import { w1 } from "./w1.js";
import { w10 } from "./w10.js";
import { w11 } from "./w11.js";
import { w12 } from "./w12.js";
import { w2 } from "./w2.js";
import { w3 } from "./w3.js";
import { w4 } from "./w4.js";
import { w5 } from "./w5.js";
import { w6 } from "./w6.js";
import { w7 } from "./w7.js";
import { w8 } from "./w8.js";
import { w9 } from "./w9.js";

export const WORKLOADS: Workload[] = [w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, mem];
