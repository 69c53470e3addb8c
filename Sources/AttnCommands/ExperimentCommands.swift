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
    @Option(help: "RoPE scaling: none, linear, ntk, dynamic, yarn (with --rope-factor; byte checkpoints also take linear:F, ntk:F). On a pretrained model it applies to the full layers, from the model's own context.")
    var ropeScaling: String?
    @Option(help: "The RoPE scaling factor (>= 1).") var ropeFactor: Double?
    @Option(help: "StreamingLLM attention sinks (pretrained models; with --attention-window): the first S positions stay in the KV cache.")
    var sinks: Int?
    @Option(help: "StreamingLLM window (pretrained models): full layers see the sinks and the last W positions; the KV cache holds S + W.")
    var attentionWindow: Int?

    /// The context extension of a pretrained model (``ContextExtension``).
    func contextExtension() throws -> ContextExtension {
        if attention != nil { throw ValidationError("--attention is not available for a pretrained model here") }
        if let r = ropeScaling, r.contains(":") { throw ValidationError("give a pretrained model's RoPE scaling as --rope-scaling NAME --rope-factor F") }
        if let r = ropeScaling, r != "none", ropeFactor == nil { throw ValidationError("--rope-scaling \(r) needs --rope-factor") }
        return try ContextExtension(method: ropeScaling ?? "none", factor: ropeFactor ?? 1, sinks: sinks ?? (attentionWindow != nil ? 0 : nil),
                                    window: attentionWindow)
    }

    /// A pretrained model (`path` a GGUF file or a Hugging Face folder) with this context extension applied.
    func loadPretrained(_ path: String, matmul: MatmulMode = .exact) throws -> (lm: LanguageModel, model: CausalLM, extension: ContextExtension) {
        let ext = try contextExtension()
        let lm = try LanguageModel(path: path, matmul: matmul)
        let model = ext.isIdentity ? lm.model : try lm.model.with(config: try ext.apply(to: lm.model.config))
        return (lm, model, ext)
    }

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
        if sinks != nil || attentionWindow != nil { throw ValidationError("--sinks and --attention-window are for pretrained models") }
        if let ropeScaling {
            guard case .rope(let theta, _) = c.positions else { throw ValidationError("--rope-scaling needs a RoPE model") }
            let parts = ropeScaling.split(separator: ":")
            let factor = parts.count == 2 ? Double(parts[1]) : ropeFactor
            if let f = factor, !(f >= 1) { throw ValidationError("--rope-factor must be at least 1, got \(f)") }
            switch (parts.first.map(String.init), factor) {
            case ("none", _): c.positions = .rope(theta: theta, scaling: .none)
            case ("linear", let f?): c.positions = .rope(theta: theta, scaling: .linear(factor: f))
            case ("ntk", let f?): c.positions = .rope(theta: theta, scaling: .ntk(factor: f))
            default: throw ValidationError("--rope-scaling of a byte checkpoint must be none, linear:F or ntk:F (or linear/ntk with --rope-factor F)")
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
        if sinks != nil || attentionWindow != nil { throw ValidationError("--sinks and --attention-window are for pretrained models") }
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
        discussion: """
            Windows never span two books. With --attention or --rope-scaling the checkpoint is changed at load time (e.g. RoPE \
            interpolation without a fine-tune). A pretrained model (--model a .gguf file or a Hugging Face folder) reads the \
            books through its own tokenizer, concatenated in the order given (default: Job, Luke, Hebrews), and reports nats per \
            token and perplexity by position bucket; --rope-scaling/--rope-factor and --sinks/--attention-window (StreamingLLM) \
            apply to its full layers.
            """)
    @Option(help: "Checkpoint directory.") var model: String
    @OptionGroup var variant: ModelVariantOptions
    @Option(help: "Tokens per window.") var window = 256
    @Option(help: "Read spans of this many tokens (a multiple of --window) as independent windows: the same text as a profile at --window SPAN.")
    var span: Int?
    @Option(help: "Books: validation (the default for a byte checkpoint), long (Job, Luke, Hebrews: the default for a pretrained model), or comma-separated names (Luke,Job).")
    var books: String?
    @Option(help: "The corpus (make corpus writes it).") var corpus = "data/kjv.txt"
    @Option(help: "Use at most this many windows, spread evenly over the books (0: all).") var maxWindows = 0
    @Option(help: "Windows per forward pass.") var batch = 4
    @Option(help: "Write the profile (per-position bits per byte; for a pretrained model, nats per token and perplexity) as JSON here.") var json: String?
    @Option(help: "Pretrained models: position buckets reported (mean loss and perplexity each).") var buckets = 8
    @Option(help: "Worker threads (default: all cores).") var threads: Int?

    struct Output: Codable {
        let model: String, books: String, window: Int, span: Int, windows: Int, meanBitsPerByte: Double, bitsPerByte: [Double]
        let attention: String, positions: String, seconds: Double
    }

    func run() throws {
        if isPretrained(model) { return try runPretrained() }
        let m = try variant.load(model, length: window)
        let books = self.books ?? "validation"
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

extension LMProfile {
    struct Bucket: Codable { let start: Int, end: Int, meanLoss: Double, perplexity: Double }
    struct PretrainedOutput: Codable {
        let model: String, books: String, window: Int, span: Int, windows: Int, textTokens: Int
        let contextExtension: String, positions: String, trainedContext: Int
        let sinks: Int?, attentionWindow: Int?
        /// Nats per token over every scored position, and exp of it.
        let meanLoss: Double, perplexity: Double
        let buckets: [Bucket]
        /// The loss (nats) averaged over consecutive bins of `curveBin` positions.
        let curveBin: Int, curve: [Double]
        /// The f32 KV cache a decode of `window` positions holds under this configuration.
        let kvCacheBytes: Int
        let seconds: Double, tokensPerSecond: Double, peakRSSBytes: Int
    }

    func runPretrained() throws {
        guard batch >= 1 else { throw ValidationError("--batch must be at least 1") }
        let (lm, m, ext) = try variant.loadPretrained(model)
        let text = try TextCorpus(path: corpus)
        let books = self.books ?? "long"
        let names: [String] = books == "long" ? ["Job", "Luke", "Heb"] : books.split(separator: ",").map(String.init)
        guard books != "validation" else { throw ValidationError("a pretrained model's profile reads --books long (Job, Luke, Hebrews) or named books") }
        // The books concatenated in the order given: one token stream (windows may cross a book's end).
        var joined = ""
        for n in names {
            guard let d = text.documents.first(where: { $0.name == n }) else { throw ValidationError("no book \(n) in \(corpus)") }
            joined += d.text
        }
        let tokens = lm.encode(joined)
        let t0 = Date()
        let p = try PositionProfile(model: m, documents: [tokens], window: window, span: span, maxWindows: maxWindows, batch: batch,
                                    threads: threads, bos: lm.addsBOS ? lm.bosToken : nil) { done, all in
            FileHandle.standardError.write(String(format: "profile: %d/%d windows, %.0f s\n", done, all, Date().timeIntervalSince(t0)).data(using: .utf8)!)
        }
        let seconds = Date().timeIntervalSince(t0)
        let n = p.nats.count, nb = min(buckets, n)
        let bs = (0..<nb).map { i -> Bucket in
            let a = i * n / nb, b = (i + 1) * n / nb, l = p.meanNats(positions: a..<b)
            return Bucket(start: a, end: b, meanLoss: l, perplexity: Foundation.exp(l))
        }
        let mean = p.nats.reduce(0, +) / Double(max(1, n))
        let bin = max(1, window / 256)
        let curve = stride(from: 0, to: n, by: bin).map { p.meanNats(positions: $0..<($0 + bin)) }
        let c = m.config
        let kv = KVCache.bytes(layers: c.layers, batch: 1, kvHeads: c.kvHeads, capacity: window, headDimension: c.headDim,
                               windows: (0..<c.layers).map { c.window(of: $0) }, maxAppend: 1)! +
            (0..<c.layers).map { c.sinks(of: $0) }.reduce(0, +) * c.kvHeads * c.headDim * 2 * 4
        print(String(format: "%@ (%@) at window %d: loss %.4f nats/token, perplexity %.3f over %d windows in %.1f s (%.0f tokens/s)",
                     lm.name, ext.description, window, mean, Foundation.exp(mean), p.windows, seconds,
                     Double(p.windows * window) / max(seconds, 1e-9)))
        for b in bs { print(String(format: "  positions %6d–%6d: loss %.4f, perplexity %.3f", b.start, b.end - 1, b.meanLoss, b.perplexity)) }
        if let json {
            try writeJSON(PretrainedOutput(model: lm.name, books: names.joined(separator: ","), window: window, span: span ?? window,
                                           windows: p.windows, textTokens: tokens.count, contextExtension: ext.description,
                                           positions: describe(c.positions), trainedContext: c.maxPositionEmbeddings,
                                           sinks: ext.streaming?.sinks, attentionWindow: ext.streaming?.window,
                                           meanLoss: mean, perplexity: Foundation.exp(mean), buckets: bs, curveBin: bin, curve: curve,
                                           kvCacheBytes: kv, seconds: seconds, tokensPerSecond: Double(p.windows * window) / max(seconds, 1e-9),
                                           peakRSSBytes: peakRSS()), to: json)
        }
    }
}

/// Whether `path` is a pretrained model (a GGUF file, or a folder with a tokenizer.json) rather
/// than one of this project's byte-level checkpoints.
func isPretrained(_ path: String) -> Bool {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return false }
    return !isDirectory.boolValue || FileManager.default.fileExists(atPath: path + "/tokenizer.json")
}

/// The process's peak resident set (getrusage's ru_maxrss, KiB on Linux).
func peakRSS() -> Int {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Int(u.ru_maxrss) * 1024
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
        discussion: "The fine-tune changes a copy in memory; the checkpoint is never written. Keys are uniform in 1...50000 (chance: 2e-5). A pretrained model (a .gguf file or a Hugging Face folder) takes no fine-tune: Landmark's prompt, instruction line included, through its tokenizer (--chat: its chat template), lengths in tokens.")
    @Option(help: "Checkpoint directory.") var model: String
    @OptionGroup var variant: ModelVariantOptions
    @Option(help: "Fine-tune steps on the task before scoring (0: none; default 100 for a byte checkpoint, 0 for a pretrained model, which takes no fine-tune).")
    var tuneSteps: Int?
    @Flag(help: "Pretrained models: the prompt as the user's message of the chat template.") var chat = false
    @Option(help: "Pretrained models: KV cache storage, f32, bf16, f16 or int8.") var kvType = "f32"
    @Option(help: "Prompts per fine-tune step.") var tuneBatch = 8
    @Option(help: "Comma-separated prompt lengths of the fine-tune.") var tuneLengths = "128,256"
    @Option(help: "Fine-tune learning rate.") var tuneLr = 1e-3
    @Flag(help: "Fine-tune with the loss on the answer only (default: on every token).") var answerOnly = false
    @Option(help: "Comma-separated prompt lengths scored.") var lengths = "256,512,1024,2048"
    @Option(help: "Comma-separated needle depths scored (0: first, 1: last).") var depths = "0,0.25,0.5,0.75,1"
    @Option(help: "Prompts per (length, depth).") var trials = 4
    @Option(help: "Seed of the fine-tune's prompts (scoring uses its own fixed keys).") var seed: UInt64 = 1
    @Option(help: "Write the results as JSON here.") var json: String?
    @Option(help: "Pretrained models: write each prompt's token ids to this directory (created) as passkey-LENGTH-DEPTH-KEY.npy (int32 [T]), to score another engine on the same prompts.")
    var promptsOut: String?
    @Option(help: "Worker threads (default: all cores).") var threads: Int?

    struct Output: Codable {
        let model: String, tuneSteps: Int, tuneLengths: [Int], tuneLoss: [Double], tuneSeconds: Double
        let results: PasskeyResults, meanAccuracy: Double, scoreSeconds: Double
    }

    func run() throws {
        if isPretrained(model) { return try runPretrained() }
        let tuneSteps = self.tuneSteps ?? 100
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


extension LMPasskey {
    struct PretrainedOutput: Codable {
        let model: String, contextExtension: String, chat: Bool, kvType: String, trainedContext: Int
        let results: PasskeyResults, meanAccuracy: Double, scoreSeconds: Double
        /// Per length: the mean prompt tokens, the seconds per trial, the KV cache bytes a trial held.
        let promptTokens: [Double], secondsPerTrial: [Double], kvCacheBytes: [Int]
        let trials: [TokenizedPasskey.Trial]
        let peakRSSBytes: Int
    }

    func runPretrained() throws {
        guard (tuneSteps ?? 0) == 0 else { throw ValidationError("a pretrained model is scored without a fine-tune (--tune-steps 0)") }
        guard let type = KVCacheType(rawValue: kvType) else { throw ValidationError("--kv-type must be f32, bf16, f16 or int8") }
        let scored = lengths.split(separator: ",").compactMap { Int($0) }
        guard !scored.isEmpty, scored.count == lengths.split(separator: ",").count, scored.allSatisfy({ $0 > 0 }) else {
            throw ValidationError("--lengths must be comma-separated positive integers")
        }
        let ds = depths.split(separator: ",").compactMap { Double($0) }
        guard ds.count == depths.split(separator: ",").count, !ds.isEmpty, ds.allSatisfy({ (0...1).contains($0) }) else {
            throw ValidationError("--depths must be comma-separated numbers in [0, 1]")
        }
        guard trials >= 1 else { throw ValidationError("--trials must be at least 1") }
        let (lm, m, ext) = try variant.loadPretrained(model, matmul: .fast)
        if chat, lm.chatTemplate == nil { throw ValidationError("\(lm.name) has no chat template (--chat)") }
        if let promptsOut { try FileManager.default.createDirectory(atPath: promptsOut, withIntermediateDirectories: true) }
        var writeError: Error?
        let t0 = Date()
        let (r, all) = try TokenizedPasskey.score(lm, model: m, lengths: scored, depths: ds, trials: trials, chat: chat, cacheType: type,
                                                  threads: threads) { t, ids in
            if let promptsOut, writeError == nil {
                // Each prompt's ids, so another engine can be scored on exactly these prompts.
                let file = (promptsOut as NSString).appendingPathComponent("passkey-\(t.length)-\(t.depth)-\(t.key).npy")
                do { try Numpy.write(int32: ids, shape: [ids.count], to: file) } catch { writeError = error }
            }
            FileHandle.standardError.write("passkey \(t.length) depth \(t.depth): \(t.promptTokens) tokens, key \(t.key), answer \(t.answer.debugDescription) \(t.correct ? "right" : "wrong") (\(String(format: "%.1f", t.seconds)) s)\n".data(using: .utf8)!)
        }
        if let writeError { throw writeError }
        let seconds = Date().timeIntervalSince(t0)
        print("| length | " + ds.map { String(format: "depth %.2f", $0) }.joined(separator: " | ") + " |")
        print("|---|" + String(repeating: "---|", count: ds.count))
        for (i, L) in scored.enumerated() {
            print("| \(L) | " + r.accuracy[i].map { String(format: "%.2f", $0) }.joined(separator: " | ") + " |")
        }
        print(String(format: "mean accuracy %.3f (%@, kv %@, scoring %.0f s)", r.mean, ext.description, kvType, seconds))
        if let json {
            let c = m.config
            let byLength = scored.map { L in all.filter { $0.length == L } }
            try writeJSON(PretrainedOutput(model: lm.name, contextExtension: ext.description, chat: chat, kvType: kvType,
                                           trainedContext: c.maxPositionEmbeddings, results: r, meanAccuracy: r.mean, scoreSeconds: seconds,
                                           promptTokens: byLength.map { Double($0.map(\.promptTokens).reduce(0, +)) / Double(max(1, $0.count)) },
                                           secondsPerTrial: byLength.map { $0.map(\.seconds).reduce(0, +) / Double(max(1, $0.count)) },
                                           kvCacheBytes: scored.map { L in
                                               let cache = try? m.makeCache(positions: L + 8, chunk: L, type: type)
                                               return cache?.bytes ?? 0 },
                                           trials: all, peakRSSBytes: peakRSS()), to: json)
        }
    }
}
