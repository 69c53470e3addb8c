import AttentionTensor
import Foundation
import LongAttention

/// One generation as a state machine that a scheduler advances a step at a time: the prompt is
/// prefilled in chunks, then each ``advance()`` decodes one token against the sequence's own
/// ``LongAttention/KVCache``. Its text is exactly what ``LanguageModel/generate(_:options:emit:)``
/// produces for the same prompt and options (same sampling, end tokens, stop strings, UTF-8
/// boundaries), so several of them can be interleaved by a server without changing any stream.
///
/// ```swift
/// var s = try DecodingSequence(model: lm, prompt: lm.encode("Hello"), options: GenerationOptions(maxTokens: 16))
/// while !s.isFinished { print(try s.advance().text, terminator: "") }
/// ```
///
/// Exact-attention models only (those that decode through a KV cache). Not `Sendable` (its text
/// decoder is not): a scheduler keeps its sequences on one thread.
public struct DecodingSequence {
    /// What one ``DecodingSequence/advance()`` produced.
    public struct Step: Sendable {
        /// New text (may be empty: a prefill chunk, a token that ends inside a UTF-8 character or
        /// that could be the start of a stop string).
        public var text: String
        /// Whether the step chose a token (false for a prefill chunk that was not the last).
        public var sampled: Bool
    }

    public let model: LanguageModel
    /// The prompt's ids.
    public let prompt: [Int32]
    public let options: GenerationOptions
    /// The longest prompt chunk one ``advance()`` prefills.
    public let prefillChunk: Int
    /// The sequence's cache (`prompt.count + options.maxTokens` positions).
    public var cache: KVCache { storedCache! }
    // Optional only so that a batched step can move the caches out and back without a copy.
    private var storedCache: KVCache?
    /// The ids generated so far (not the end token).
    public private(set) var tokens: [Int32] = []
    /// Prompt ids already in the cache.
    public private(set) var prefilled = 0
    /// Set once the generation has ended: `"stop"` (an end token or a stop string) or `"length"`.
    public private(set) var finishReason: String?
    public var isFinished: Bool { finishReason != nil }
    /// Whether the prompt is entirely in the cache.
    public var isPrefilled: Bool { prefilled == prompt.count }

    private var rng: SplitMix64
    private var history: [Int32]
    private var stream: TextStream
    private var stops: StopStrings
    private let ends: [Int32]
    private var logits: [Float] = []

    /// A sequence generating after `prompt` (ids, BOS included when the model adds it). Throws
    /// for an empty prompt, invalid sampling options, a model that does not decode through a KV
    /// cache, or a cache beyond the memory budget.
    ///
    /// With `prefix`, the prompt's first `positions` tokens are taken from that cache (one that
    /// holds the same ids there: a server's prefix cache; ``cachedTokens`` says which ids a cache
    /// holds) instead of being prefilled; `positions` must be below the prompt's length (the last
    /// prompt token is always run, for its logits). The logits then agree with a full prefill to
    /// float rounding, not bit for bit (the prefix was computed in other chunks).
    public init(model: LanguageModel, prompt: [Int32], options: GenerationOptions, prefillChunk: Int = 256,
                prefix: (cache: KVCache, positions: Int)? = nil) throws {
        try options.sampling.validate()
        guard !prompt.isEmpty else { throw ModelError.tooFewTokens(input: "the prompt", count: 0, minimum: 1) }
        try requireOption(options.maxTokens >= 0, "max tokens", options.maxTokens, ">= 0")
        guard model.model.decodesWithCache else {
            throw ModelError.unsupportedModel(operation: "decoding \(model.name)", requirement: "layers that all decode through a KV cache")
        }
        try model.model.checkTokens(prompt, batch: 1, length: prompt.count)
        let (total, overflow) = prompt.count.addingReportingOverflow(options.maxTokens)
        guard !overflow, total <= 1 << 22 else { throw ModelError.sequenceTooLong(length: overflow ? Int.max : total, limit: 1 << 22) }
        self.model = model
        self.prompt = prompt
        self.options = options
        self.prefillChunk = max(1, prefillChunk)
        storedCache = try model.model.makeCache(positions: prompt.count + options.maxTokens, chunk: self.prefillChunk,
                                          type: options.cacheType)
        rng = SplitMix64(seed: options.sampling.seed)
        history = options.sampling.repetitionPenalty != 1 ? prompt : []
        stream = model.codec.streamingDecoder()
        stops = StopStrings(options.stop)
        ends = model.endTokens
        if options.maxTokens == 0 { finishReason = "length" }
        if let prefix {
            try requireOption(prefix.positions >= 0 && prefix.positions < prompt.count && prefix.positions <= prefix.cache.lengths[0],
                              "prefix positions", prefix.positions,
                              "in 0..<\(prompt.count) (the prompt) and at most \(prefix.cache.lengths[0]) (the cache)")
            try storedCache!.copy(from: prefix.cache, positions: prefix.positions)
            prefilled = prefix.positions
        }
    }

    /// The ids whose keys and values ``cache`` holds, in position order: the prompt, then the
    /// generated tokens already fed back (the last sampled token is not in the cache yet).
    public var cachedTokens: [Int32] { Array((prompt + tokens).prefix(cache.lengths[0])) }

    /// The bytes a cache for `prompt` tokens and `maxTokens` new ones takes (what ``init`` allocates).
    public static func cacheBytes(model: LanguageModel, promptTokens: Int, maxTokens: Int, type: KVCacheType, prefillChunk: Int = 256) -> Int {
        let c = model.model.config
        return KVCache.bytes(layers: c.layers, batch: 1, kvHeads: c.kvHeads, capacity: promptTokens + maxTokens,
                             headDimension: c.headDim, type: type, windows: (0..<c.layers).map { c.window(of: $0) },
                             maxAppend: max(1, min(prefillChunk, CausalLM.prefillChunk))) ?? Int.max
    }

    /// Runs the next prompt chunk, or decodes one token. Returns the text that became final; after
    /// the last token (or the `maxTokens`-th), ``isFinished`` is true and the held-back text is flushed.
    public mutating func advance(threads: Int? = nil) throws -> Step {
        guard finishReason == nil else { return Step(text: "", sampled: false) }
        let threads = threads ?? options.threads
        if !isPrefilled {
            let end = min(prompt.count, prefilled + prefillChunk)
            let chunk = Array(prompt[prefilled..<end])
            let last = end == prompt.count
            logits = try model.model.step(chunk, cache: &storedCache!, threads: threads, logits: last)
            prefilled = end
            guard last else { return Step(text: "", sampled: false) }
        } else {
            logits = try model.model.step([tokens.last!], cache: &storedCache!, threads: threads, logits: true)
        }
        return try sample()
    }

    /// Whether the next ``advance()`` decodes a token (the prompt is in the cache, and the
    /// generation has not ended): the steps ``advance(_:threads:)`` batches.
    public var isDecoding: Bool { isPrefilled && !isFinished }

    /// Advances every sequence of `batch` by one step, exactly as each one's ``advance()`` would:
    /// a prompt chunk for a sequence still prefilling, one token for a decoding one. The decoding
    /// steps of sequences sharing a model are batched (``CausalLM/step(tokens:caches:threads:)``,
    /// up to ``CausalLM/maxDecodeBatch`` per call): each weight is read once per step for all of
    /// them, and each sequence's logits — hence its text — are bitwise those it gets alone.
    ///
    /// Returns one result per sequence, in order: a sequence's own failure (non-finite logits)
    /// does not fail the others; a failing batched model call fails the sequences it carried.
    public static func advance(_ batch: inout [DecodingSequence], threads: Int? = nil) -> [Result<Step, any Error>] {
        var results = [Result<Step, any Error>?](repeating: nil, count: batch.count)
        var decoding = [Int]()
        for i in batch.indices {
            if batch[i].isDecoding { decoding.append(i) } else { results[i] = Result { try batch[i].advance(threads: threads) } }
        }
        // Groups of one model (by identity), each cut into calls of at most maxDecodeBatch rows.
        var groups = [[Int]]()
        for i in decoding {
            if let g = groups.firstIndex(where: { batch[$0[0]].model.model === batch[i].model.model && $0.count < CausalLM.maxDecodeBatch }) {
                groups[g].append(i)
            } else {
                groups.append([i])
            }
        }
        for group in groups {
            let model = batch[group[0]].model.model
            let V = model.config.vocabSize
            var caches = group.map { batch[$0].storedCache.take()! }
            let tokens = group.map { batch[$0].tokens.last! }
            let outcome = Result { try model.step(tokens: tokens, caches: &caches, threads: threads ?? batch[group[0]].options.threads) }
            for (r, i) in group.enumerated() { batch[i].storedCache = caches[r] }
            switch outcome {
            case .success(let logits):
                // Each sequence samples from its own row with its own random source, so the rows
                // are sampled on the step's threads at once (a 49,152-token row takes about a
                // millisecond: sort, exponentials), each with the result it gets alone.
                nonisolated(unsafe) let lp = logits.unsafeBaseAddress
                let rows = group.count
                batch.withUnsafeMutableBufferPointer { b in
                    results.withUnsafeMutableBufferPointer { out in
                        nonisolated(unsafe) let (b, out) = (b, out)
                        Parallel.run(items: rows, threads: rows > 1 ? (threads ?? b[group[0]].options.threads ?? Parallel.defaultThreads) : 1) { _, queue in
                            while let r = queue.next() {
                                let i = group[r]
                                b[i].logits = Array(UnsafeBufferPointer(start: lp + r * V, count: V))
                                out[i] = Result { try b[i].sample() }
                            }
                        }
                    }
                }
            case .failure(let error):
                for i in group { results[i] = .failure(error) }
            }
        }
        return results.map { $0! }
    }

    private mutating func sample() throws -> Step {
        let V = model.model.config.vocabSize
        let produced = tokens.count
        let sampling = options.sampling
        let t: Int32 = try logits.withUnsafeMutableBufferPointer { buffer in
            let p = buffer.baseAddress!
            if let bad = (0..<V).first(where: { !p[$0].isFinite }) {
                throw ModelError.nonFiniteLogits(step: produced, token: bad)
            }
            return sampling.pick(p, vocab: V, rng: &rng, history: history)
        }
        if sampling.repetitionPenalty != 1 { history.append(t) }
        if ends.contains(t) {
            finishReason = "stop"
            return Step(text: stops.finish(try stream.finish()), sampled: true)
        }
        tokens.append(t)
        let (out, hit) = stops.feed(try stream.push(t))
        if hit {
            finishReason = "stop"
            return Step(text: out, sampled: true)
        }
        if tokens.count >= options.maxTokens {
            finishReason = "length"
            return Step(text: out + stops.finish(try stream.finish()), sampled: true)
        }
        return Step(text: out, sampled: true)
    }
}
