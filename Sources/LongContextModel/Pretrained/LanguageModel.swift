import AttentionTensor
import ChatTemplate
import Foundation
import LongAttention
import Tokenizers

/// A model with its tokenizer and chat template, loaded in one call from a GGUF file, a Hugging
/// Face folder (`config.json`, safetensors, `tokenizer.json` and `tokenizer_config.json` when
/// present) or one of this project's byte-level checkpoints:
///
/// ```swift
/// let lm = try LanguageModel(path: "data/models/SmolLM2-135M-Instruct.Q4_1.gguf")
/// let prompt = try lm.chatPrompt([ChatMessage(role: "user", content: "What is the capital of France?")])
/// for try await piece in lm.generate(prompt, options: GenerationOptions(maxTokens: 64)) {
///     print(piece, terminator: "")
/// }
/// ```
public final class LanguageModel: Sendable {
    /// The network.
    public let model: CausalLM
    /// Text ↔ ids.
    public let codec: TextCodec
    /// The chat template the model ships (GGUF `tokenizer.chat_template`, `tokenizer_config.json`), if any.
    public let chatTemplate: ChatTemplate?
    /// The file or folder name without extension (an OpenAI-style model id).
    public let name: String

    public init(model: CausalLM, codec: TextCodec, chatTemplate: ChatTemplate?, name: String) {
        (self.model, self.codec, self.chatTemplate, self.name) = (model, codec, chatTemplate, name)
    }

    /// Loads `path`: a `.gguf` file or a checkpoint folder. `matmul` chooses how decoding
    /// multiplies by quantised weights (``MatmulMode``; `.exact` for scoring, `.fast` for
    /// generation; float32 checkpoints compute the same either way).
    ///
    /// `quantize` (`.q8_0` or `.q4_0`) quantises a checkpoint folder's float weight matrices at
    /// load (``CausalLM/quantizing(to:)``), so that `.fast` runs them on the integer kernels; a
    /// GGUF file's matrices are quantised already, and asking for it there is refused.
    public convenience init(path: String, matmul: MatmulMode = .exact, quantize: GGMLType? = nil) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ModelError.fileNotFound(path: path)
        }
        let name = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
        if !isDirectory.boolValue {
            if let quantize {
                throw ModelError.invalidOption(name: "--quantize", value: quantize.name, expected: "given for a checkpoint folder only (\(path) is a GGUF file, whose weights are stored quantised already)")
            }
            let file = try GGUFFile(path: path)
            let model = try CausalLM(gguf: path, file: file, matmul: matmul)
            let meta = file
            let tokenizer = try Tokenizer(try GGUFModelDescription.vocabulary(meta, config: model.config))
            let template = try meta.string("tokenizer.chat_template").map { try ChatTemplate($0) }
            self.init(model: model, codec: .tokenizer(tokenizer), chatTemplate: template, name: name)
            return
        }
        var model = try CausalLM(directory: path)
        if let quantize { model = try model.quantizing(to: quantize).withMatmul(matmul) }
        let json = path + "/tokenizer.json", configFile = path + "/tokenizer_config.json"
        if FileManager.default.fileExists(atPath: json) {
            let hasConfig = FileManager.default.fileExists(atPath: configFile)
            let tokenizer = try Tokenizer.huggingFace(tokenizerJSON: URL(fileURLWithPath: json),
                                                      tokenizerConfig: hasConfig ? URL(fileURLWithPath: configFile) : nil)
            self.init(model: model, codec: .tokenizer(tokenizer), chatTemplate: try Self.folderChatTemplate(path), name: name)
            return
        }
        guard model.config.vocabSize == ByteTokenizer.vocabSize else {
            throw ModelError.invalidCheckpoint(file: path, reason: "no tokenizer.json, and its vocabulary (\(model.config.vocabSize)) is not this project's bytes")
        }
        self.init(model: model, codec: .bytes, chatTemplate: nil, name: name)
    }

    /// A folder's chat template: `chat_template.jinja` (transformers 5 writes it there), else
    /// `tokenizer_config.json`'s `chat_template` — a string, or a list of `{name, template}` of which
    /// the one named `default` is taken.
    static func folderChatTemplate(_ path: String) throws -> ChatTemplate? {
        if let data = FileManager.default.contents(atPath: path + "/chat_template.jinja") {
            guard let text = String(data: data, encoding: .utf8) else {
                throw ModelError.invalidCheckpoint(file: path + "/chat_template.jinja", reason: "not UTF-8")
            }
            return try ChatTemplate(text)
        }
        guard let data = FileManager.default.contents(atPath: path + "/tokenizer_config.json") else { return nil }
        guard let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw ModelError.invalidCheckpoint(file: path + "/tokenizer_config.json", reason: "not a JSON object")
        }
        switch o["chat_template"] {
        case nil, is NSNull: return nil
        case let t as String: return try ChatTemplate(t)
        case let list as [[String: Any]]:
            guard let t = list.first(where: { $0["name"] as? String == "default" })?["template"] as? String else {
                throw ModelError.invalidCheckpoint(file: path + "/tokenizer_config.json", reason: "chat_template lists no template named \"default\"")
            }
            return try ChatTemplate(t)
        default:
            throw ModelError.invalidCheckpoint(file: path + "/tokenizer_config.json", reason: "chat_template is neither a string nor a list of {name, template}")
        }
    }

    /// Ids of `text` (control tokens written in it are single ids; BOS when the model adds it).
    public func encode(_ text: String, addSpecial: Bool = true) -> [Int32] { codec.encode(text, addSpecial: addSpecial) }

    /// Text of `ids`.
    public func decode(_ ids: [Int32]) throws -> String { try codec.decode(ids) }

    /// Whether encoding puts BOS first (the tokenizer's rule; this project's byte models always do).
    public var addsBOS: Bool {
        switch codec {
        case .bytes: return true
        case .tokenizer(let t): return t.vocabulary.addBOS
        }
    }

    /// The BOS id, if the model has one.
    public var bosToken: Int32? {
        switch codec {
        case .bytes: return ByteTokenizer.bos
        case .tokenizer(let t): return t.vocabulary.bosID
        }
    }

    /// Ids that end a generation: the config's end tokens, and the tokenizer's (`<|im_end|>`, `<end_of_turn>`, …).
    public var endTokens: [Int32] {
        var ids = model.config.endTokenIds.map { Int32($0) }
        if let e = model.config.eosTokenId { ids.append(Int32(e)) }
        ids += codec.endTokens
        return Array(Set(ids)).sorted()
    }

    /// `messages` rendered by the model's chat template with the generation prompt, as
    /// transformers' `apply_chat_template(..., add_generation_prompt=True)` renders them. Throws
    /// when the model has no template (Gemma 3 270M, a base model).
    public func chatPrompt(_ messages: [ChatMessage], addGenerationPrompt: Bool = true, now: Date? = nil) throws -> String {
        guard let chatTemplate else {
            throw ModelError.noChatTemplate(model: name)
        }
        return try chatTemplate.render(messages: messages, addGenerationPrompt: addGenerationPrompt,
                                       bosToken: codec.tokenText(model.config.bosTokenId),
                                       eosToken: codec.tokenText(model.config.eosTokenId), now: now)
    }

    /// Generates a continuation of `prompt` as text pieces, each a whole number of UTF-8
    /// characters, on a task of its own; cancelling the consuming task (or dropping the stream)
    /// stops the generation at the next token. Ends at an end token, a stop string (not included),
    /// or `options.maxTokens`.
    public func generate(_ prompt: String, options: GenerationOptions = GenerationOptions()) -> AsyncThrowingStream<String, Error> {
        AsyncThrowingStream { continuation in
            let task = Task.detached { [self] in
                do {
                    try self.generate(prompt, options: options) { piece in
                        if Task.isCancelled { return false }
                        continuation.yield(piece)
                        return true
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// What a generation produced.
    public struct Generation: Sendable {
        /// The new ids (not the prompt's, not the end token).
        public var tokens: [Int32] = []
        /// Why it ended: `"stop"` (an end token or a stop string) or `"length"`.
        public var finishReason = "length"
        public var promptTokens = 0
    }

    /// The generation loop behind ``generate(_:options:)``, synchronous: `emit` receives text pieces
    /// (return false to stop). Returns the ids and why it stopped.
    @discardableResult
    /// `source` replaces the model's own KV-cache decoding (``LogitSource``).
    public func generate(_ prompt: String, options: GenerationOptions, source: LogitSource? = nil,
                         emit: (String) throws -> Bool) throws -> Generation {
        let ids = encode(prompt)
        guard !ids.isEmpty else { throw ModelError.tooFewTokens(input: "the prompt", count: 0, minimum: 1) }
        var result = Generation(promptTokens: ids.count)
        var stream = codec.streamingDecoder()
        var stops = StopStrings(options.stop)
        var stoppedByText = false
        let ends = endTokens
        var sawEnd = false
        try model.generate(prompt: ids, maxTokens: options.maxTokens, sampling: options.sampling, stopTokens: ends,
                           cacheType: options.cacheType, threads: options.threads, source: source) { t in
            result.tokens.append(t)
            let piece = try stream.push(t)
            let (out, hit) = stops.feed(piece)
            if !out.isEmpty, try !emit(out) { return false }
            if hit { stoppedByText = true; return false }
            return true
        }
        sawEnd = result.tokens.count < options.maxTokens && !stoppedByText
        if !stoppedByText {
            let tail = stops.finish(try stream.finish())
            if !tail.isEmpty { _ = try emit(tail) }
        }
        result.finishReason = stoppedByText || sawEnd ? "stop" : "length"
        return result
    }
}

/// Options of ``LanguageModel/generate(_:options:)``.
public struct GenerationOptions: Sendable {
    public var maxTokens: Int
    public var sampling: SamplingOptions
    /// Texts that end the generation when they appear in the output (not included).
    public var stop: [String]
    public var cacheType: KVCacheType
    public var threads: Int?

    public init(maxTokens: Int = 256, sampling: SamplingOptions = SamplingOptions(), stop: [String] = [],
                cacheType: KVCacheType = .float32, threads: Int? = nil) {
        (self.maxTokens, self.sampling, self.stop, self.cacheType, self.threads) = (maxTokens, sampling, stop, cacheType, threads)
    }
}

/// Text ↔ ids: a real tokenizer, or this project's bytes (ids 0…255 and BOS/EOS/PAD).
public enum TextCodec: Sendable {
    case bytes
    case tokenizer(Tokenizer)

    public func encode(_ text: String, addSpecial: Bool = true) -> [Int32] {
        switch self {
        case .bytes: return (addSpecial ? [ByteTokenizer.bos] : []) + ByteTokenizer.encode(text)
        case .tokenizer(let t): return t.encode(text, addSpecial: addSpecial)
        }
    }

    public func decode(_ ids: [Int32]) throws -> String {
        switch self {
        case .bytes: return ByteTokenizer.decode(ids)
        case .tokenizer(let t): return try t.decode(ids)
        }
    }

    /// End-of-generation ids the tokenizer knows of.
    var endTokens: [Int32] {
        switch self {
        case .bytes: return [ByteTokenizer.eos]
        case .tokenizer(let t): return t.endOfGenerationIDs
        }
    }

    /// The text of a special token (BOS/EOS for a chat template), or "".
    func tokenText(_ id: Int?) -> String {
        guard let id, case .tokenizer(let t) = self else { return "" }
        return t.tokenText(Int32(id)) ?? ""
    }

    func streamingDecoder() -> TextStream { TextStream(codec: self) }
}

/// Ids in, text out, never splitting a UTF-8 character.
struct TextStream {
    let codec: TextCodec
    var pending = [UInt8]()
    var decoder: StreamingDecoder?

    init(codec: TextCodec) {
        self.codec = codec
        if case .tokenizer(let t) = codec { decoder = StreamingDecoder(t) }
    }

    mutating func push(_ id: Int32) throws -> String {
        if decoder != nil { return try decoder!.push(id) }
        guard (0..<256).contains(id) else { return "" }
        pending.append(UInt8(id))
        return Self.completePrefix(&pending)
    }

    mutating func finish() throws -> String {
        if decoder != nil { return decoder!.finish() }
        defer { pending = [] }
        return String(decoding: pending, as: UTF8.self)
    }

    /// The longest prefix of `bytes` that ends on a character boundary, removed from `bytes`.
    static func completePrefix(_ bytes: inout [UInt8]) -> String {
        var end = bytes.count, back = 0
        // A UTF-8 sequence still open at the end: find its lead byte within the last 3 bytes.
        while back < min(3, bytes.count), bytes[bytes.count - 1 - back] & 0xC0 == 0x80 { back += 1 }
        if back < bytes.count {
            let lead = bytes[bytes.count - 1 - back]
            let need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1
            if need > back + 1 { end = bytes.count - 1 - back }
        }
        let s = String(decoding: bytes[..<end], as: UTF8.self)
        bytes.removeFirst(end)
        return s
    }
}

/// Finds stop strings in streamed text: text that could still be the start of a stop string is
/// held back until it is not.
struct StopStrings {
    let stops: [String]
    var held = ""

    init(_ stops: [String]) { self.stops = stops.filter { !$0.isEmpty } }

    /// The text safe to emit after `piece`, and whether a stop string was found (the text before it is emitted).
    mutating func feed(_ piece: String) -> (String, Bool) {
        guard !stops.isEmpty else { return (piece, false) }
        held += piece
        if let r = stops.compactMap({ held.range(of: $0) }).min(by: { $0.lowerBound < $1.lowerBound }) {
            let out = String(held[..<r.lowerBound])
            held = ""
            return (out, true)
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        var keep = 0
        for s in stops {
            for n in stride(from: min(s.count - 1, held.count), to: 0, by: -1) where held.hasSuffix(s.prefix(n)) {
                keep = max(keep, n)
                break
            }
        }
        let cut = held.index(held.endIndex, offsetBy: -keep)
        let out = String(held[..<cut])
        held = String(held[cut...])
        return (out, false)
    }

    mutating func finish(_ tail: String) -> String {
        let (out, hit) = feed(tail)
        defer { held = "" }
        return hit ? out : out + held
    }
}
