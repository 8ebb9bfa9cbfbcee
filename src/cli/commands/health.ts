/** grpc.health.v1 command: health. */
import { type ChannelCredentials, credentials, makeGenericClientConstructor, type ServiceError } from "@grpc/grpc-js";
import { service as healthService } from "grpc-health-check";
import type { CommandSpec } from "../registry.js";

interface HealthClient {
  check(req: { service: string }, opts: { deadline: number }, cb: (err: ServiceError | null, res?: { status: string }) => void): void;
  close(): void;
}

const HealthClientCtor = makeGenericClientConstructor(healthService as never, "Health") as unknown as new (
  addr: string,
  creds: ReturnType<typeof credentials.createInsecure>,
) => HealthClient;

/** grpc.health.v1.Health/Check: "SERVING", "NOT_SERVING", ... */
export function checkHealth(addr: string, service: string, timeoutMs: number, creds: ChannelCredentials = credentials.createInsecure()): Promise<string> {
  const c = new HealthClientCtor(addr, creds);
  return new Promise<string>((resolve, reject) => {
    c.check({ service }, { deadline: Date.now() + timeoutMs }, (err, res) => {
      c.close();
      if (err) reject(err);
      else resolve(res?.status ?? "UNKNOWN");
    });
  });
}

export const healthCommands: CommandSpec[] = [
  {
    name: "health",
    group: "grpc.health.v1",
    summary: 'serving status of the daemon or of one service (Health/Check); exit status 1 unless SERVING',
    args: ["[SERVICE]"],
    details: 'SERVICE is a full name such as mmsim.v1.FaultService; default "" (the whole daemon).',
    async run(ctx, a) {
      const service = a.pos.SERVICE ?? "";
      const st = await checkHealth(ctx.conn.address, service, ctx.conn.timeoutMs, ctx.conn.channelCredentials);
      if (ctx.json) ctx.printJson({ service, status: st });
      else ctx.out(st);
      return st === "SERVING" ? 0 : 1;
    },
  },
];
