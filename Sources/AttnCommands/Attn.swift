import ArgumentParser
import AttentionTensor
import LongAttention
import LongContextModel

/// `attn`: run the package's attention variants on NumPy files (the `attn run` contract of
/// SPEC.md), so outside programs can check them.
public struct Attn: ParsableCommand {
    public init() {}
    public static let configuration = CommandConfiguration(
        commandName: "attn",
        abstract: "Long-context attention on the CPU (OpenBLAS), on NumPy .npy files.",
        subcommands: [Run.self, Grad.self, LM.self, Pattern.self, Needle.self, Info.self, Moe.self])
}

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the OpenBLAS kernel (and why it was chosen), the elementwise and KV-cache kernel paths and the thread count.")
    func run() {
        print("OpenBLAS kernel: \(BLASKernelSelection.status)")
        print("elementwise kernels: \(VectorKernels.isa)")
        print("decode kernels (f32): \(KVCacheType.float32KernelPath)")
        print("KV cache kernels (bf16, f16, int8): \(KVCacheType.kernelPath)")
        print("threads: \(Parallel.defaultThreads)")
        if let warning = BLAS.kernelWarning { print("note: \(warning)") }
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compute one attention variant: q [B,H,N,d], k [B,Hkv,M,d], v [B,Hkv,M,dv] -> out [B,H,N,dv].",
        subcommands: [RunFull.self, RunBigBird.self, RunLinear.self, RunInfini.self])
}

/// The inputs every variant reads, for `run` and `grad`.
struct QKVOptions: ParsableArguments {
    @Option(name: .customLong("q"), help: "Queries, float32 .npy [B, H, N, d].")
    var q: String
    @Option(name: .customLong("k"), help: "Keys, float32 .npy [B, Hkv, M, d].")
    var k: String
    @Option(name: .customLong("v"), help: "Values, float32 .npy [B, Hkv, M, dv].")
    var v: String
    @Option(help: "Worker threads (default: all cores).")
    var threads: Int?

    func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
    }

    func load() throws -> (q: Tensor, k: Tensor, v: Tensor) {
        (try Numpy.readTensor(q, rank: 4), try Numpy.readTensor(k, rank: 4), try Numpy.readTensor(v, rank: 4))
    }
}

/// The inputs and output every `run` variant takes.
struct IOOptions: ParsableArguments {
    @OptionGroup var inputs: QKVOptions
    @Option(name: [.customShort("o"), .customLong("output")], help: "Output .npy [B, H, N, dv] (written only on success).")
    var output: String

    var threads: Int? { inputs.threads }
    func load() throws -> (q: Tensor, k: Tensor, v: Tensor) { try inputs.load() }
}

/// The softmax variants' score scale, for `run` and `grad` of full and bigbird.
struct ScaleOption: ParsableArguments {
    @Option(help: "Score scale (default 1/sqrt(d)).")
    var scale: Float?

    func validate() throws {
        if let scale, !scale.isFinite { throw ValidationError("--scale must be finite") }
    }
}

/// Exact attention's options, shared by `run full` and `grad full`.
struct FullOptions: ParsableArguments {
    @Flag(help: "Bottom-right causal mask: query i sees key j iff j <= i + M - N.")
    var causal = false
    @OptionGroup var scaleOption: ScaleOption
    @Flag(exclusivity: .exclusive, help: "Implementation (default: chosen by size; the backward is always tiled).")
    var implementation: Implementation = .automatic

    enum Implementation: String, EnumerableFlag {
        case automatic, tiled, materialized
        static func name(for value: Self) -> NameSpecification { value == .automatic ? .customLong("auto") : .long }
    }

    var scale: Float? { scaleOption.scale }
    var mask: AttentionMask { causal ? .causal : .none }
}

struct RunFull: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "full",
        abstract: "Exact softmax attention: softmax(scale · Q Kᵀ + mask) V.")
    @OptionGroup var io: IOOptions
    @OptionGroup var options: FullOptions

    func run() throws {
        let (q, k, v) = try io.load()
        let out = try scaledDotProductAttention(
            queries: q, keys: k, values: v, scale: options.scale, mask: options.mask,
            implementation: ExactAttentionImplementation(rawValue: options.implementation.rawValue)!, threads: io.threads)
        try Numpy.write(out, to: io.output)
    }
}

/// Linear attention's options, shared by `run linear` and `grad linear`.
struct LinearOptions: ParsableArguments {
    @Flag(help: "Causal (bottom-right): sums over keys j <= i + M - N (chunked form).")
    var causal = false
    @Option(help: "Feature map: elu (elu+1), relu, softmax (Efficient Attention, non-causal), favor (Performer FAVOR+).")
    var featureMap: MapName = .elu
    @Option(help: "FAVOR+ random features m.")
    var features: Int = 256
    @Option(help: "FAVOR+ seed.")
    var seed: UInt64 = 0
    @Option(help: "Causal chunk size.")
    var chunkSize: Int = 64

    enum MapName: String, ExpressibleByArgument, CaseIterable { case elu, relu, softmax, favor }

    func validate() throws {
        if features < 1 || features > 65536 { throw ValidationError("--features must be in 1...65536") }
        if chunkSize < 1 { throw ValidationError("--chunk-size must be at least 1") }
        if causal && featureMap == .softmax { throw ValidationError("--feature-map softmax is non-causal only") }
    }

    var map: LinearFeatureMap {
        switch featureMap {
        case .elu: .elu
        case .relu: .relu
        case .softmax: .softmax
        case .favor: .favor(features: features, seed: seed)
        }
    }
}

struct RunLinear: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "linear",
        abstract: "Linear attention φ(Q)(φ(K)ᵀV) / (φ(Q)·Σφ(K) + ε), in O(N).")
    @OptionGroup var io: IOOptions
    @OptionGroup var options: LinearOptions

    func run() throws {
        let (q, k, v) = try io.load()
        let out = try linearAttention(queries: q, keys: k, values: v, featureMap: options.map, causal: options.causal,
                                      chunkSize: options.chunkSize, threads: io.threads)
        try Numpy.write(out, to: io.output)
    }
}

/// Infini-Attention's options, shared by `run infini` and `grad infini`.
struct InfiniOptions: ParsableArguments {
    @Option(help: "Segment length S (the last segment may be shorter).")
    var segment: Int
    @Option(help: "Memory update: linear or delta.")
    var update: InfiniAttention.Update = .linear
    @Option(help: "Gate logits β, float32 .npy [H] (default: zeros).")
    var beta: String?

    func validate() throws {
        if segment < 1 { throw ValidationError("--segment must be at least 1") }
    }

    /// The layer for `heads` query heads.
    func layer(heads: Int) throws -> InfiniAttention {
        let betas: [Float]
        if let beta {
            let t = try Numpy.readTensor(beta, rank: 1)
            guard t.shape[0] == heads else {
                throw ValidationError("\(beta): \(t.shape[0]) gate logits for H = \(heads) heads")
            }
            betas = t.scalars
        } else {
            betas = Array(repeating: 0, count: heads)
        }
        return try InfiniAttention(segmentLength: segment, update: update, beta: betas)
    }
}

struct RunInfini: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "infini",
        abstract: "Infini-Attention: causal attention within segments plus a compressive memory of earlier segments.")
    @OptionGroup var io: IOOptions
    @OptionGroup var options: InfiniOptions
    @Option(help: "Start from this saved memory (.npy [B, Hkv, d, dv + 1]) instead of an empty one.")
    var memoryIn: String?
    @Option(help: "Save the final memory here (.npy [B, Hkv, d, dv + 1]).")
    var memoryOut: String?

    func run() throws {
        let (q, k, v) = try io.load()
        let infini = try options.layer(heads: q.shape[1])
        var memory = try memoryIn.map { try CompressiveMemory.load(from: $0) }
            ?? CompressiveMemory(batch: q.shape[0], kvHeads: k.shape[1], headDimension: q.shape[3], valueDimension: v.shape[3])
        let out = try infini(queries: q, keys: k, values: v, memory: &memory, threads: io.threads)
        if let memoryOut { try memory.save(to: memoryOut) }
        try Numpy.write(out, to: io.output)
    }
}

extension InfiniAttention.Update: ExpressibleByArgument {}
