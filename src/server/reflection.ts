/**
 * gRPC server reflection (grpc.reflection.v1 and v1alpha, @grpc/reflection)
 * fed with real FileDescriptorProtos: the FileDescriptorSet that
 * `npm run build` writes with `buf build` (dist/proto/mmsim.binpb), plus a
 * descriptor of grpc.health.v1 built here. Descriptors derived by
 * proto-loader are not used: they misname map entries and drop
 * proto3_optional, and Python / grpcurl reject them.
 *
 * Reflection streams are tracked so that shutdown can end them cleanly.
 */
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import {
  DescriptorProtoSchema,
  type FileDescriptorProto,
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
  FileDescriptorProtoSchema,
  FileDescriptorSetSchema,
} from "@bufbuild/protobuf/wkt";
import type { Server, ServerDuplexStream, ServiceDefinition, UntypedServiceImplementation } from "@grpc/grpc-js";
import type { PackageDefinition } from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";

/**
 * Where the descriptor set is: beside the compiled daemon
 * (dist/src/server -> dist/proto), or under dist/ when running from source.
 */
export function descriptorSetCandidates(): string[] {
  return [
    fileURLToPath(new URL("../../proto/mmsim.binpb", import.meta.url)),
    fileURLToPath(new URL("../../dist/proto/mmsim.binpb", import.meta.url)),
  ];
}

export function findDescriptorSet(): string | undefined {
  return descriptorSetCandidates().find((p) => existsSync(p));
}

/** The files of a serialized FileDescriptorSet. */
export function parseDescriptorSet(bytes: Uint8Array): FileDescriptorProto[] {
  return fromBinary(FileDescriptorSetSchema, bytes).file;
}

const T = FieldDescriptorProto_Type;
const L = FieldDescriptorProto_Label;

function field(name: string, number: number, type: FieldDescriptorProto_Type, typeName?: string, repeated = false) {
  return {
    name,
    number,
    type,
    label: repeated ? L.REPEATED : L.OPTIONAL,
    jsonName: name,
    ...(typeName !== undefined ? { typeName } : {}),
  };
}

/**
 * grpc.health.v1's health.proto as a FileDescriptorProto (the package ships
 * only the .proto text), so that reflection clients can call Check / Watch.
 */
export function healthFileDescriptor(): FileDescriptorProto {
  const statusEnum = {
    name: "ServingStatus",
    value: [
      { name: "UNKNOWN", number: 0 },
      { name: "SERVING", number: 1 },
      { name: "NOT_SERVING", number: 2 },
      { name: "SERVICE_UNKNOWN", number: 3 },
    ],
  };
  const messages: MessageInitShape<typeof DescriptorProtoSchema>[] = [
    { name: "HealthCheckRequest", field: [field("service", 1, T.STRING)] },
    {
      name: "HealthCheckResponse",
      field: [field("status", 1, T.ENUM, ".grpc.health.v1.HealthCheckResponse.ServingStatus")],
      enumType: [statusEnum],
    },
    { name: "HealthListRequest" },
    {
      name: "HealthListResponse",
      field: [field("statuses", 1, T.MESSAGE, ".grpc.health.v1.HealthListResponse.StatusesEntry", true)],
      nestedType: [
        {
          name: "StatusesEntry",
          field: [field("key", 1, T.STRING), field("value", 2, T.MESSAGE, ".grpc.health.v1.HealthCheckResponse")],
          options: { mapEntry: true },
        },
      ],
    },
  ];
  return create(FileDescriptorProtoSchema, {
    name: "grpc/health/v1/health.proto",
    package: "grpc.health.v1",
    syntax: "proto3",
    messageType: messages,
    service: [
      {
        name: "Health",
        method: [
          { name: "Check", inputType: ".grpc.health.v1.HealthCheckRequest", outputType: ".grpc.health.v1.HealthCheckResponse" },
          {
            name: "Watch",
            inputType: ".grpc.health.v1.HealthCheckRequest",
            outputType: ".grpc.health.v1.HealthCheckResponse",
            serverStreaming: true,
          },
          { name: "List", inputType: ".grpc.health.v1.HealthListRequest", outputType: ".grpc.health.v1.HealthListResponse" },
        ],
      },
    ],
    options: { javaPackage: "io.grpc.health.v1", javaMultipleFiles: true, goPackage: "google.golang.org/grpc/health/grpc_health_v1" },
  });
}

export interface ReflectionInfo {
  /** descriptor set file used */
  path: string;
  /** files served */
  files: string[];
  /** services declared in them */
  services: string[];
}

export class DaemonReflection {
  private readonly streams = new Set<ServerDuplexStream<unknown, unknown>>();

  private constructor(
    private readonly service: ReflectionService,
    readonly info: ReflectionInfo,
  ) {}

  /**
   * Reflection over the descriptor set at `path` (default: the one the build
   * wrote) plus grpc.health.v1. Throws if the file cannot be read or parsed.
   */
  static load(path = findDescriptorSet()): DaemonReflection {
    if (path === undefined) throw new Error(`no descriptor set (looked for ${descriptorSetCandidates().join(", ")}; run npm run build)`);
    const files = [...parseDescriptorSet(readFileSync(path)), healthFileDescriptor()];
    const bytes = files.map((f) => toBinary(FileDescriptorProtoSchema, f));
    const pkg = { "mmsim.descriptors": { fileDescriptorProtos: bytes } } as unknown as PackageDefinition;
    const services = files.flatMap((f) => f.service.map((s) => (f.package !== "" ? `${f.package}.${s.name}` : s.name)));
    return new DaemonReflection(new ReflectionService(pkg), { path, files: files.map((f) => f.name), services });
  }

  addToServer(server: Server): void {
    const streams = this.streams;
    this.service.addToServer({
      addService: (def: ServiceDefinition, impl: UntypedServiceImplementation) => {
        const tracked: UntypedServiceImplementation = {};
        for (const [name, h] of Object.entries(impl)) {
          tracked[name] = (call: ServerDuplexStream<unknown, unknown>) => {
            streams.add(call);
            const drop = () => streams.delete(call);
            call.on("cancelled", drop);
            call.on("finish", drop);
            (h as (c: ServerDuplexStream<unknown, unknown>) => void)(call);
          };
        }
        server.addService(def, tracked);
      },
    });
  }

  /** Shutdown: end open reflection streams with OK. */
  endStreams(): number {
    const n = this.streams.size;
    for (const call of this.streams) {
      try {
        call.end();
      } catch {
        // the peer is gone already
      }
    }
    this.streams.clear();
    return n;
  }
}
