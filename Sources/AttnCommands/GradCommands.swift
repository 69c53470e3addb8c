import ArgumentParser
import AttentionTensor
import LongAttention

/// `attn grad VARIANT`: the vector-Jacobian product of a variant with an upstream gradient (the
/// gradients of `L = Σ out ⊙ dout`), SPEC.md § Gradients.
struct Grad: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Gradients of L = Σ out ⊙ dout with respect to q, k, v (and β for Infini).",
        subcommands: [GradFull.self, GradBigBird.self, GradLinear.self, GradInfini.self])
}

/// The inputs and outputs every `grad` variant takes.
struct GradIOOptions: ParsableArguments {
    @OptionGroup var inputs: QKVOptions
    @Option(help: "Upstream gradient, float32 .npy [B, H, N, dv] (the output's shape).")
    var dout: String
    @Option(help: "dL/dq output .npy [B, H, N, d].")
    var dq: String
    @Option(help: "dL/dk output .npy [B, Hkv, M, d].")
    var dk: String
    @Option(help: "dL/dv output .npy [B, Hkv, M, dv].")
    var dv: String
    @Option(help: "Infini only: dL/dβ output .npy [H].")
    var dbeta: String?
    @Option(name: [.customShort("o"), .customLong("output")], help: "Also write the forward output here.")
    var output: String?

    var threads: Int? { inputs.threads }

    func validate() throws {
        let outputs = [dq, dk, dv] + [dbeta, output].compactMap { $0 }
        if Set(outputs).count != outputs.count { throw ValidationError("output files must differ: \(outputs.joined(separator: ", "))") }
    }

    func load() throws -> (q: Tensor, k: Tensor, v: Tensor, dout: Tensor) {
        let (q, k, v) = try inputs.load()
        return (q, k, v, try Numpy.readTensor(dout, rank: 4))
    }

    /// Writes the gradients (and the output when asked) only after every one was computed, so a
    /// refused input leaves no file; each file is written to a temporary name and renamed.
    func write(_ grads: AttentionGradients, output out: Tensor?) throws {
        try Numpy.write(grads.queries, to: dq)
        try Numpy.write(grads.keys, to: dk)
        try Numpy.write(grads.values, to: dv)
        if let dbeta, let beta = grads.beta { try Numpy.write(try Tensor(shape: [beta.count], scalars: beta), to: dbeta) }
        if let output, let out { try Numpy.write(out, to: output) }
    }
}

struct GradFull: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "full", abstract: "Exact attention's gradients (FlashAttention-2's backward).")
    @OptionGroup var io: GradIOOptions
    @OptionGroup var options: FullOptions

    func run() throws {
        let (q, k, v, dout) = try io.load()
        let forward = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, scale: options.scale,
                                                           mask: options.mask, threads: io.threads)
        let grads = try scaledDotProductAttentionBackward(queries: q, keys: k, values: v, forward: forward, outputGradient: dout,
                                                          scale: options.scale, mask: options.mask, threads: io.threads)
        try io.write(grads, output: forward.output)
    }
}

struct GradLinear: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "linear", abstract: "Linear attention's gradients (chunked cumulative sums; FAVOR+ features fixed).")
    @OptionGroup var io: GradIOOptions
    @OptionGroup var options: LinearOptions

    func run() throws {
        let (q, k, v, dout) = try io.load()
        let forward = try linearAttentionForward(queries: q, keys: k, values: v, featureMap: options.map, causal: options.causal,
                                                 chunkSize: options.chunkSize, threads: io.threads)
        let grads = try linearAttentionBackward(queries: q, keys: k, values: v, forward: forward, outputGradient: dout,
                                                featureMap: options.map, causal: options.causal, chunkSize: options.chunkSize,
                                                threads: io.threads)
        try io.write(grads, output: forward.output)
    }
}

struct GradBigBird: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bigbird", abstract: "BigBird's gradients (the plan fixed), on the attended blocks only.")
    @OptionGroup var io: GradIOOptions
    @OptionGroup var bigbird: BigBirdOptions
    @OptionGroup var scaleOption: ScaleOption
    var scale: Float? { scaleOption.scale }

    func run() throws {
        let (q, k, v, dout) = try io.load()
        let plan = try bigbird.plan(sequenceLength: q.shape[2], heads: q.shape[1],
                                    explicitR: CommandLine.arguments.contains("--random-blocks"))
        let forward = try bigBirdAttentionForward(queries: q, keys: k, values: v, plan: plan, scale: scale, threads: io.threads)
        let grads = try bigBirdAttentionBackward(queries: q, keys: k, values: v, plan: plan, forward: forward, outputGradient: dout,
                                                 scale: scale, threads: io.threads)
        try io.write(grads, output: forward.output)
    }
}

struct GradInfini: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "infini",
        abstract: "Infini-Attention's gradients from an empty memory: local attention, memory reads and updates, and dβ.")
    @OptionGroup var io: GradIOOptions
    @OptionGroup var options: InfiniOptions

    func run() throws {
        let (q, k, v, dout) = try io.load()
        let layer = try options.layer(heads: q.shape[1])
        let grads = try layer.backward(queries: q, keys: k, values: v, outputGradient: dout, threads: io.threads)
        let out = io.output == nil ? nil : try layer(queries: q, keys: k, values: v, threads: io.threads)
        try io.write(grads, output: out)
    }
}
