import ArgumentParser
import AttentionTensor
import Foundation
import LongContextModel

/// `--model`: a GGUF file, or a checkpoint directory (its matrices quantised with `--quantize`).
func loadCausalLM(_ path: String, matmul: MatmulMode = .exact, quantize: GGMLType? = nil) throws -> CausalLM {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
        throw ValidationError("\(path): no such file or directory")
    }
    guard isDirectory.boolValue else {
        if quantize != nil { throw ValidationError("\(path): --quantize applies to a checkpoint folder (a GGUF file is quantised already)") }
        return try CausalLM(gguf: path, matmul: matmul)
    }
    let m = try CausalLM(directory: path)
    return try quantize.map { try m.quantizing(to: $0).withMatmul(matmul) } ?? m
}

/// `--quantize q8_0|q4_0`: a checkpoint folder's float matrices quantised at load (``CausalLM/quantizing(to:)``).
enum QuantizeOption {
    static let help: ArgumentHelp = "Quantise a checkpoint folder's float weight matrices at load: q8_0 or q4_0 (ggml's rules; under q4_0 the embedding and LM head take q8_0), so --matmul fast runs them on the integer kernels."
    static func type(_ value: String?) throws -> GGMLType? {
        guard let value else { return nil }
        guard let t = GGMLType.quantizable(named: value) else {
            throw ValidationError("--quantize must be q8_0 or q4_0, got \(value)")
        }
        return t
    }
}

/// `--matmul exact|fast` (``MatmulMode``): exact multiplies by weights dequantised a panel at a
/// time in float32; fast runs decoding steps (≤ 16 rows) on the quantised integer kernels.
enum MatmulOption {
    static func check(_ value: String) throws {
        guard MatmulMode(rawValue: value) != nil else { throw ValidationError("--matmul must be exact or fast, got \(value)") }
    }
    static func mode(_ value: String) -> MatmulMode { MatmulMode(rawValue: value) ?? .exact }
}

/// Reads `--text` or `--text-file` verbatim (no trimming; an empty text is valid).
func readText(text: String?, file: String?) throws -> String {
    switch (text, file) {
    case (let t?, nil): return t
    case (nil, let f?):
        guard let data = FileManager.default.contents(atPath: f) else { throw ValidationError("\(f): cannot read") }
        guard let s = String(data: data, encoding: .utf8) else { throw ValidationError("\(f): not UTF-8 text") }
        return s
    default: throw ValidationError("give exactly one of --text and --text-file")
    }
}

struct LMTokenize: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Token ids of a text under a model's tokenizer (control tokens written in the text are single ids; BOS when the model adds it).")
    @Option(help: "A GGUF file, or a checkpoint directory.") var model: String
    @Option(help: "The text, verbatim.") var text: String?
    @Option(help: "A UTF-8 text file, verbatim.") var textFile: String?
    @Flag(help: "Add no BOS/EOS (Hugging Face's add_special_tokens=False).") var noSpecial = false
    @Option(name: [.customShort("o"), .customLong("out")], help: "Output: int32 .npy [n] (default: print the ids).") var out: String?

    func run() throws {
        let input = try readText(text: text, file: textFile)
        let lm = try LanguageModel(path: model)
        let ids = lm.encode(input, addSpecial: !noSpecial)
        if let out { try Numpy.write(int32: ids, shape: [ids.count], to: out) } else { print(ids.map(String.init).joined(separator: " ")) }
    }
}

struct LMPerplexity: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ppl",
        abstract: "Perplexity of a text as llama.cpp's perplexity tool measures it.",
        discussion: """
            The text is tokenized once (BOS first when the model adds BOS) and cut into consecutive chunks of --ctx tokens \
            (a last partial chunk is dropped); the first token of each chunk becomes BOS when the model adds BOS. In every \
            chunk the tokens at positions ctx/2+1 ... ctx-1 are scored, each from the logits one position before; \
            PPL = exp(mean loss).
            """)
    @OptionGroup var arguments: PerplexityArguments

    func run() throws {
        try arguments.run(try arguments.load(), chunkLoss: nil, writes: true)
    }
}

/// The options of `attn lm ppl`, shared with `attn dist ppl` (same flags, same outputs).
public struct PerplexityArguments: ParsableArguments {
    public init() {}
    @Option(help: "A GGUF file, or a checkpoint directory.") public var model: String
    @Option(help: "A UTF-8 text file, verbatim.") public var textFile: String
    @Option(help: "Tokens per chunk.") public var ctx: Int
    @Option(help: "exact (float32 products of the dequantised weights, each chunk in one pass) or fast (8-bit integer kernels: each chunk goes through a KV cache 16 tokens at a time, as decoding computes it, so every product takes the integer kernels; attn dist ppl: chunks in one pass).") public var matmul = "exact"
    @Option(help: QuantizeOption.help) public var quantize: String?
    @Option(help: "Output: the result as JSON.") public var json: String?
    @Option(help: "Worker threads (default: all cores).") public var threads: Int?

    public func validate() throws {
        try MatmulOption.check(matmul)
        _ = try QuantizeOption.type(quantize)
        guard ctx >= 4, ctx <= 1 << 20 else { throw ValidationError("--ctx must lie in 4...2^20, got \(ctx)") }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
    }

    struct Output: Codable {
        let model: String, ctx: Int, chunks: Int, scoredTokens: Int, textTokens: Int
        let perplexity: Double, meanLoss: Double, seconds: Double, tokensPerSecond: Double
        let chunkPerplexities: [Double]
    }

    public func load() throws -> LanguageModel {
        try LanguageModel(path: model, matmul: MatmulOption.mode(matmul), quantize: try QuantizeOption.type(quantize))
    }

    /// Scores the text (`chunkLoss`: a distributed run's scorer, nil for this process's forward);
    /// with `writes`, prints the progress, the result line and the JSON (rank 0 of a distributed run).
    public func run(_ lm: LanguageModel, chunkLoss: ((_ chunk: [Int32], _ rows: [Int]) throws -> Double)?, writes: Bool) throws {
        let text = try readText(text: nil, file: textFile)
        let start = Date()
        // Under fast, a chunk in one pass would take the exact path (more than 16 rows): step it instead.
        let stepwise = chunkLoss == nil && lm.model.matmul == .fast ? WeightMatrix.fastRowLimit : nil
        let r = try lm.model.perplexity(tokens: lm.encode(text), context: ctx, bos: lm.addsBOS ? lm.bosToken : nil, threads: threads,
                                        rowsPerStep: stepwise, chunkLoss: chunkLoss) { i, n, ppl in
            if writes { FileHandle.standardError.write(String(format: "[%d/%d] %.4f\n", i + 1, n, ppl).data(using: .utf8)!) }
        }
        let seconds = Date().timeIntervalSince(start)
        guard writes else { return }
        print(String(format: "perplexity %.4f over %d chunks of %d tokens (%d scored) in %.1f s", r.perplexity, r.chunks.count, ctx,
                     r.scored, seconds))
        if let json {
            let o = Output(model: model, ctx: ctx, chunks: r.chunks.count, scoredTokens: r.scored, textTokens: r.textTokens,
                           perplexity: r.perplexity, meanLoss: r.meanLoss, seconds: seconds,
                           tokensPerSecond: Double(r.chunks.count * ctx) / max(seconds, 1e-9), chunkPerplexities: r.chunks)
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            try writeFileAtomically(try enc.encode(o), to: json)
        }
    }
}

/// Writes `data` through a temporary file in the same directory and a rename.
func writeFileAtomically(_ data: Data, to path: String) throws {
    let url = URL(fileURLWithPath: path)
    let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
    try data.write(to: tmp)
    guard rename(tmp.path, path) == 0 else {
        try? FileManager.default.removeItem(at: tmp)
        throw ValidationError("cannot rename \(tmp.path) to \(path)")
    }
}
