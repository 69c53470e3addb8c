import ArgumentParser
import AttentionTensor
import Foundation
import LongAttention
import LongContextModel

/// A checkpoint's attention variant and RoPE scaling changed at load time: what `lm train --from`
/// fine-tunes, and what `lm profile` and `lm passkey` evaluate (RoPE interpolation without a
/// fine-tune, say).
struct ModelVariantOptions: ParsableArguments {
    @Option(help: "Attention of every layer: exact, bigbird, linear, infini, infini-delta (a checkpoint's own variant is kept unless given).")
    var attention: String?
    @Option(help: "Infini segment length / BigBird block size (with --attention).") var segment = 256
    @Option(help: "RoPE scaling: none, linear:F (position interpolation), ntk:F (NTK-aware base).") var ropeScaling: String?

    /// `c` with this variant applied; `length` raises max_position_embeddings, `seed` fixes
    /// BigBird's random blocks.
    func apply(to c: ModelConfig, length: Int, seed: UInt64) throws -> ModelConfig {
        var c = c
        if let attention {
            let variant: LayerAttention
            switch attention {
            case "exact": variant = .exact
            case "bigbird": variant = .bigbird(blockSize: segment, windowBlocks: 3, randomBlocks: 2, seed: seed)
            case "linear": variant = .linear(featureMap: .elu)
            case "infini": variant = .infini(segment: segment, update: .linear)
            case "infini-delta": variant = .infini(segment: segment, update: .delta)
            default: throw ValidationError("--attention must be exact, bigbird, linear, infini or infini-delta")
            }
            c.attention = Array(repeating: variant, count: c.layers)
        }
        if let ropeScaling {
            guard case .rope(let theta, _) = c.positions else { throw ValidationError("--rope-scaling needs a RoPE model") }
            let parts = ropeScaling.split(separator: ":")
            let factor = parts.count == 2 ? Double(parts[1]) : nil
            switch (parts.first.map(String.init), factor) {
            case ("none", _): c.positions = .rope(theta: theta, scaling: .none)
            case ("linear", let f?): c.positions = .rope(theta: theta, scaling: .linear(factor: f))
            case ("ntk", let f?): c.positions = .rope(theta: theta, scaling: .ntk(factor: f))
            default: throw ValidationError("--rope-scaling must be none, linear:F or ntk:F")
            }
        }
        c.maxPositionEmbeddings = max(c.maxPositionEmbeddings, length)
        try c.validate()
        return c
    }

    /// `base`'s weights in `config`'s layout (parameters new to it, such as Infini's gates, start at 0).
    func carry(_ base: CausalLM, into config: ModelConfig) throws -> ParameterSet {
        let p = try ParameterSet(layout: CausalLM.layout(config))
        for e in p.entries {
            if let b = base.parameters.entry(e.name), b.shape == e.shape {
                (p.scalars + e.offset).update(from: base.parameters.scalars + b.offset, count: e.count)
            }
        }
        return p
    }

    /// The checkpoint in `directory` with this variant applied.
    func load(_ directory: String, length: Int, seed: UInt64 = 1) throws -> CausalLM {
        let base = try CausalLM(directory: directory)
        guard attention != nil || ropeScaling != nil || length > base.config.maxPositionEmbeddings else { return base }
        let config = try apply(to: base.config, length: length, seed: seed)
        return try CausalLM(config: config, parameters: try carry(base, into: config))
    }
}

/// The token streams of named books of the corpus, or of its validation split.
func corpusDocuments(_ books: String, corpus: String) throws -> [(name: String, tokens: [Int32])] {
    let text = try TextCorpus(path: corpus)
    let docs: [TextCorpus.Document]
    switch books {
    case "validation": docs = text.validation
    case "long": docs = text.longDocuments
    default:
        docs = try books.split(separator: ",").map { name in
            guard let d = text.documents.first(where: { $0.name == name }) else { throw ValidationError("no book \(name) in \(corpus)") }
            return d
        }
    }
    return docs.map { ($0.name, [ByteTokenizer.bos] + ByteTokenizer.encode($0.text) + [ByteTokenizer.eos]) }
}

/// Writes `value` as pretty JSON to `path` through a temporary file and a rename.
func writeJSON<T: Encodable>(_ value: T, to path: String) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    let data = try encoder.encode(value)
    let dir = (path as NSString).deletingLastPathComponent
    if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
    try data.write(to: URL(fileURLWithPath: path), options: .atomic)
}

struct LMProfile: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "profile",
        abstract: "Bits per byte against position: the mean next-token loss at each position of non-overlapping windows of held-out books.",
        discussion: "Windows never span two books. With --attention or --rope-scaling the checkpoint is changed at load time (e.g. RoPE interpolation without a fine-tune).")
    @Option(help: "Checkpoint directory.") var model: String
    @OptionGroup var variant: ModelVariantOptions
    @Option(help: "Tokens per window.") var window = 256
    @Option(help: "Read spans of this many tokens (a multiple of --window) as independent windows: the same text as a profile at --window SPAN.")
    var span: Int?
    @Option(help: "Books: validation, long, or comma-separated names (Luke,Job).") var books = "validation"
    @Option(help: "The corpus (make corpus writes it).") var corpus = "data/kjv.txt"
    @Option(help: "Use at most this many windows, spread evenly over the books (0: all).") var maxWindows = 0
    @Option(help: "Windows per forward pass.") var batch = 4
    @Option(help: "Write the profile (per-position bits per byte) as JSON here.") var json: String?
    @Option(help: "Worker threads (default: all cores).") var threads: Int?

    struct Output: Codable {
        let model: String, books: String, window: Int, span: Int, windows: Int, meanBitsPerByte: Double, bitsPerByte: [Double]
        let attention: String, positions: String, seconds: Double
    }

    func run() throws {
        let m = try variant.load(model, length: window)
        let docs = try corpusDocuments(books, corpus: corpus).map(\.tokens)
        let t0 = Date()
        let p = try PositionProfile(model: m, documents: docs, window: window, span: span, maxWindows: maxWindows, batch: batch,
                                    threads: threads)
        let seconds = Date().timeIntervalSince(t0)
        let quarter = max(1, (window - 1) / 4)
        print(String(format: "%@ at window %d: %.4f bits/byte over %d windows (positions 0–%d: %.4f; last %d: %.4f) in %.1f s",
                     model, window, p.mean, p.windows, quarter - 1, p.mean(positions: 0..<quarter), quarter,
                     p.mean(positions: (window - 1 - quarter)..<(window - 1)), seconds))
        if let json {
            try writeJSON(Output(model: model, books: books, window: window, span: span ?? window, windows: p.windows, meanBitsPerByte: p.mean,
                                 bitsPerByte: p.bitsPerByte, attention: "\(m.config.attention[0])",
                                 positions: describe(m.config.positions), seconds: seconds), to: json)
        }
    }
}

/// "rope θ=10000", "rope θ=10000 linear ×4", "alibi".
func describe(_ p: ModelConfig.PositionEncoding) -> String {
    switch p {
    case .alibi: return "alibi"
    case .rope(let theta, .none): return "rope θ=\(theta)"
    case .rope(let theta, .linear(let f)): return "rope θ=\(theta) linear ×\(f)"
    case .rope(let theta, .ntk(let f)): return "rope θ=\(theta) ntk ×\(f)"
    case .rope(let theta, .dynamic(let f)): return "rope θ=\(theta) dynamic ×\(f)"
    case .rope(let theta, .llama3(let f, _, _, let c)): return "rope θ=\(theta) llama3 ×\(f) from \(c)"
    case .rope(let theta, .yarn(let f, let c, _, _, _, _)): return "rope θ=\(theta) yarn ×\(f) from \(c)"
    }
}

struct LMPasskey: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "passkey",
        abstract: "Passkey retrieval (Landmark Attention's format): a short fine-tune on the task, then greedy accuracy by prompt length and needle depth.",
        discussion: "The fine-tune changes a copy in memory; the checkpoint is never written. Keys are uniform in 1...50000 (chance: 2e-5).")
    @Option(help: "Checkpoint directory.") var model: String
    @OptionGroup var variant: ModelVariantOptions
    @Option(help: "Fine-tune steps on the task before scoring (0: none).") var tuneSteps = 100
    @Option(help: "Prompts per fine-tune step.") var tuneBatch = 8
    @Option(help: "Comma-separated prompt lengths of the fine-tune.") var tuneLengths = "128,256"
    @Option(help: "Fine-tune learning rate.") var tuneLr = 1e-3
    @Flag(help: "Fine-tune with the loss on the answer only (default: on every token).") var answerOnly = false
    @Option(help: "Comma-separated prompt lengths scored.") var lengths = "256,512,1024,2048"
    @Option(help: "Comma-separated needle depths scored (0: first, 1: last).") var depths = "0,0.25,0.5,0.75,1"
    @Option(help: "Prompts per (length, depth).") var trials = 4
    @Option(help: "Seed of the fine-tune's prompts (scoring uses its own fixed keys).") var seed: UInt64 = 1
    @Option(help: "Write the results as JSON here.") var json: String?
    @Option(help: "Worker threads (default: all cores).") var threads: Int?

    struct Output: Codable {
        let model: String, tuneSteps: Int, tuneLengths: [Int], tuneLoss: [Double], tuneSeconds: Double
        let results: PasskeyResults, meanAccuracy: Double, scoreSeconds: Double
    }

    func run() throws {
        func ints(_ s: String, _ name: String) throws -> [Int] {
            let v = s.split(separator: ",").compactMap { Int($0) }
            guard !v.isEmpty, v.count == s.split(separator: ",").count, v.allSatisfy({ $0 > 0 }) else {
                throw ValidationError("--\(name) must be comma-separated positive integers")
            }
            return v
        }
        let scored = try ints(lengths, "lengths"), tuned = try ints(tuneLengths, "tune-lengths")
        let ds = depths.split(separator: ",").compactMap { Double($0) }
        guard ds.count == depths.split(separator: ",").count, !ds.isEmpty, ds.allSatisfy({ (0...1).contains($0) }) else {
            throw ValidationError("--depths must be comma-separated numbers in [0, 1]")
        }
        let m = try variant.load(model, length: max(scored.max()!, tuned.max()!) + 8)
        var tuning = PasskeyTuning()
        (tuning.steps, tuning.batch, tuning.lengths, tuning.learningRate, tuning.seed, tuning.threads) =
            (tuneSteps, tuneBatch, tuned, tuneLr, seed, threads)
        tuning.answerOnly = answerOnly
        let t0 = Date()
        let losses = try tuning.run(m) { step, loss in
            if step % 25 == 0 || step == tuneSteps - 1 {
                FileHandle.standardError.write(String(format: "passkey fine-tune step %d/%d: answer loss %.3f\n", step + 1, tuneSteps, loss).data(using: .utf8)!)
            }
        }
        let tuneSeconds = Date().timeIntervalSince(t0)
        let t1 = Date()
        let r = try PasskeyResults(model: m, lengths: scored, depths: ds, trials: trials, threads: threads)
        let scoreSeconds = Date().timeIntervalSince(t1)
        print("| length | " + ds.map { String(format: "depth %.2f", $0) }.joined(separator: " | ") + " |")
        print("|---|" + String(repeating: "---|", count: ds.count))
        for (i, L) in scored.enumerated() {
            print("| \(L) | " + r.accuracy[i].map { String(format: "%.2f", $0) }.joined(separator: " | ") + " |")
        }
        print(String(format: "mean accuracy %.3f (fine-tune %.0f s, scoring %.0f s)", r.mean, tuneSeconds, scoreSeconds))
        if let json {
            try writeJSON(Output(model: model, tuneSteps: tuneSteps, tuneLengths: tuned, tuneLoss: losses, tuneSeconds: tuneSeconds,
                                 results: r, meanAccuracy: r.mean, scoreSeconds: scoreSeconds), to: json)
        }
    }
}
