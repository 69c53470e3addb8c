import AttentionTensor
import CAttentionKernels
import Foundation
import LongAttention

/// How the next token is chosen from the logits.
public struct SamplingOptions: Sendable, Equatable {
    /// 0: greedy (argmax, ties to the lower id). Otherwise logits are divided by it.
    public var temperature: Double = 0
    /// Keep only the k most likely tokens (0: all).
    public var topK = 0
    /// Keep the smallest set of most likely tokens whose probability reaches p (1: all).
    public var topP = 1.0
    /// Keep only tokens whose probability is at least `minP` times the most likely one's (0: all).
    public var minP = 0.0
    /// CTRL's repetition penalty, as transformers and llama.cpp apply it: the logit `z` of every
    /// token already in the context becomes `z / penalty` when positive and `z · penalty` when
    /// negative (1: off). Applied before greedy choice too.
    public var repetitionPenalty = 1.0
    public var seed: UInt64 = 0

    public init(temperature: Double = 0, topK: Int = 0, topP: Double = 1, minP: Double = 0, repetitionPenalty: Double = 1,
                seed: UInt64 = 0) {
        (self.temperature, self.topK, self.topP, self.seed) = (temperature, topK, topP, seed)
        (self.minP, self.repetitionPenalty) = (minP, repetitionPenalty)
    }

    public func validate() throws {
        try requireOption(temperature >= 0 && temperature.isFinite, "temperature", temperature, ">= 0 and finite")
        try requireOption(topK >= 0, "top-k", topK, ">= 0")
        try requireOption(topP > 0 && topP <= 1, "top-p", topP, "in (0, 1]")
        try requireOption(minP >= 0 && minP <= 1, "min-p", minP, "in [0, 1]")
        try requireOption(repetitionPenalty > 0 && repetitionPenalty.isFinite, "repetition penalty", repetitionPenalty, "positive")
    }

    /// Picks a token from `logits` (V values) after applying the repetition penalty over `history`
    /// (the ids in context: prompt and generated so far; each distinct id penalised once).
    func pick(_ logits: UnsafeMutablePointer<Float>, vocab V: Int, rng: inout SplitMix64, history: [Int32]) -> Int32 {
        if repetitionPenalty != 1 {
            let p = Float(repetitionPenalty)
            for t in Set(history) where (0..<V).contains(Int(t)) {
                let z = logits[Int(t)]
                logits[Int(t)] = z > 0 ? z / p : z * p
            }
        }
        return pick(UnsafePointer(logits), vocab: V, rng: &rng)
    }

    /// Picks a token from `logits` (V values) with the random source `rng`.
    ///
    /// The candidates are ordered by logit (descending, ties to the lower id) with a stable radix
    /// sort of the logits' bits, and normalised lazily (only the weights the top-p cut and the
    /// walk visit are divided): the same order and the same floating-point operations, in the
    /// same order, as ``pickBySorting(_:vocab:rng:)`` (a comparison sort, eager normalisation),
    /// so the same token for the same seed, at a fraction of the time (a comparison sort of a
    /// 49,152-token vocabulary took ~7 ms per token, a third of a SmolLM2 decoding step).
    func pick(_ logits: UnsafePointer<Float>, vocab V: Int, rng: inout SplitMix64) -> Int32 {
        if temperature == 0 { return Self.argmax(logits, vocab: V) }
        if isUnordered { return pickInIdOrder(logits, vocab: V, rng: &rng) }
        var order = descendingOrder(logits, count: V)
        if topK > 0, topK < order.count { order.removeLast(order.count - topK) }
        let m = Double(logits[order[0]])
        var n = order.count
        let w = [Double](unsafeUninitializedCapacity: n) { b, c in
            for i in 0..<n { b[i] = Foundation.exp((Double(logits[order[i]]) - m) / temperature) }
            c = n
        }
        if minP > 0 {
            // w[0] is the most likely (its weight is exp(0) = 1): keep weights ≥ minP.
            n = w.firstIndex(where: { $0 < minP }) ?? n
        }
        var total = 0.0
        for i in 0..<n { total += w[i] }
        // p[i] = w[i] / total (then / s after a top-p cut), computed only where it is read.
        var s: Double? = nil
        if topP < 1 {
            var acc = 0.0, keep = 0
            while keep < n { acc += w[keep] / total; keep += 1; if acc >= topP { break } }
            n = keep
            var t = 0.0
            for i in 0..<n { t += w[i] / total }
            s = t
        }
        func p(_ i: Int) -> Double { s.map { w[i] / total / $0 } ?? w[i] / total }
        var u = rng.nextUnitOpen(), i = 0
        while i < n - 1, u >= p(i) { u -= p(i); i += 1 }
        return Int32(order[i])
    }

    /// The first most likely token (greedy; ties to the lower id).
    static func argmax(_ logits: UnsafePointer<Float>, vocab V: Int) -> Int32 {
        var best = 0
        for i in 1..<V where logits[i] > logits[best] { best = i }
        return Int32(best)
    }

    /// Neither top-k nor top-p: which tokens are kept (all, or those min-p keeps) does not depend
    /// on their order, and neither does the distribution, so the draw needs no sort.
    var isUnordered: Bool { topK == 0 && topP >= 1 }

    /// The weights of the unordered draw: w_i = exp((z_i − max z) / T) in float32 by the vectorised
    /// `ak_exp` (the same bits on every path), 0 where min-p drops the token (w_i < minP, never a
    /// most likely one).
    static func unorderedWeights(_ logits: UnsafePointer<Float>, vocab V: Int, temperature: Double, minP: Double) -> [Float] {
        let m = logits[Int(argmax(logits, vocab: V))]
        return [Float](unsafeUninitializedCapacity: V) { b, c in
            unorderedWeights(logits, from: 0, count: V, max: m, temperature: temperature, minP: minP, into: b.baseAddress!)
            c = V
        }
    }

    /// ``unorderedWeights(_:vocab:temperature:minP:)`` of ids `a ..< a + n` into `w`, given the
    /// maximum logit `m` (each weight depends only on its own logit and `m`).
    static func unorderedWeights(_ logits: UnsafePointer<Float>, from a: Int, count n: Int, max m: Float, temperature: Double,
                                 minP: Double, into w: UnsafeMutablePointer<Float>) {
        let t = Float(temperature), cut = Float(minP)
        for j in 0..<n { w[j] = (logits[a + j] - m) / t }
        ak_exp(w, w, n)
        // The most likely tokens are always kept (their weight is exp(0), whatever min-p is).
        if cut > 0 { for j in 0..<n where w[j] < cut && logits[a + j] != m { w[j] = 0 } }
    }

    /// The unordered draw (``isUnordered``): the ids walked in order, p_i = w_i / Σw formed only
    /// where the walk reads it (as ``pickInIdOrderReference(_:vocab:rng:)`` does eagerly, the same
    /// operations). A 262,144-token vocabulary costs a vectorised exp and one pass, where the
    /// sorted draw cost Gemma 3 ~2.7 ms a token (radix sort and an exp in double per token).
    /// Since 2026-12-07: before, this case took the sorted walk, so a seed gives other tokens
    /// than it did then (from the same distribution).
    func pickInIdOrder(_ logits: UnsafePointer<Float>, vocab V: Int, rng: inout SplitMix64) -> Int32 {
        // The weights chunk by chunk into a buffer on the stack (no V-float array per token:
        // 1 MiB for Gemma 3): a pass for the total, then the walk recomputes its chunks.
        let m = logits[Int(Self.argmax(logits, vocab: V))], chunk = Swift.min(V, 4096)
        return withUnsafeTemporaryAllocation(of: Float.self, capacity: chunk) { w -> Int32 in
            func weights(from a: Int, count n: Int) {
                Self.unorderedWeights(logits, from: a, count: n, max: m, temperature: temperature, minP: minP, into: w.baseAddress!)
            }
            var total = 0.0, last = 0
            for a in stride(from: 0, to: V, by: chunk) {
                let n = Swift.min(chunk, V - a)
                weights(from: a, count: n)
                for j in 0..<n where w[j] > 0 { total += Double(w[j]); last = a + j }
            }
            // A temperature below float's range (~1e-45) gives the top token exp(0 / 0) = NaN and the
            // rest 0: that is greedy. (Callers pass finite logits; DecodingSequence checks them.)
            guard total > 0, total.isFinite else { return Self.argmax(logits, vocab: V) }
            var u = rng.nextUnitOpen()
            for a in stride(from: 0, to: last, by: chunk) {
                let n = Swift.min(chunk, last - a)
                weights(from: a, count: n)
                for j in 0..<n where w[j] > 0 {
                    let p = Double(w[j]) / total
                    if u < p { return Int32(a + j) }
                    u -= p
                }
            }
            return Int32(last)
        }
    }

    /// The reference for ``pickInIdOrder(_:vocab:rng:)``: the kept ids and their probabilities
    /// formed eagerly, then the walk.
    func pickInIdOrderReference(_ logits: UnsafePointer<Float>, vocab V: Int, rng: inout SplitMix64) -> Int32 {
        let w = Self.unorderedWeights(logits, vocab: V, temperature: temperature, minP: minP)
        let kept = (0..<V).filter { w[$0] > 0 }
        let total = kept.reduce(0.0) { $0 + Double(w[$1]) }
        guard total > 0, total.isFinite else { return Self.argmax(logits, vocab: V) }
        let p = kept.map { Double(w[$0]) / total }
        var u = rng.nextUnitOpen(), i = 0
        while i < p.count - 1, u >= p[i] { u -= p[i]; i += 1 }
        return Int32(kept[i])
    }

    /// The reference for ``pick(_:vocab:rng:)`` under top-k or top-p: a comparison sort and eager normalisation.
    func pickBySorting(_ logits: UnsafePointer<Float>, vocab V: Int, rng: inout SplitMix64) -> Int32 {
        if temperature == 0 { return Self.argmax(logits, vocab: V) }
        // Candidates sorted by logit (descending, ties to the lower id), then top-k and top-p.
        var order = Array(0..<V)
        order.sort { logits[$0] != logits[$1] ? logits[$0] > logits[$1] : $0 < $1 }
        if topK > 0 { order = Array(order.prefix(topK)) }
        let m = Double(logits[order[0]])
        var p = order.map { Foundation.exp((Double(logits[$0]) - m) / temperature) }
        if minP > 0 {
            // p[0] is the most likely (its weight is exp(0) = 1): keep weights ≥ minP.
            let keep = p.firstIndex(where: { $0 < minP }) ?? p.count
            order = Array(order.prefix(keep))
            p = Array(p.prefix(keep))
        }
        let total = p.reduce(0, +)
        p = p.map { $0 / total }
        if topP < 1 {
            var acc = 0.0, keep = 0
            while keep < p.count { acc += p[keep]; keep += 1; if acc >= topP { break } }
            order = Array(order.prefix(keep))
            p = Array(p.prefix(keep))
            let s = p.reduce(0, +)
            p = p.map { $0 / s }
        }
        var u = rng.nextUnitOpen(), i = 0
        while i < p.count - 1, u >= p[i] { u -= p[i]; i += 1 }
        return Int32(order[i])
    }
}

/// The ids `0..<count` ordered by `logits` descending, ties to the lower id (the order of the
/// comparison `a != b ? a > b : i < j` for finite logits; -0 and +0 are equal): a stable LSD radix
/// sort (three passes of 11 bits) of an order-preserving 32-bit key, from the ids in order.
func descendingOrder(_ logits: UnsafePointer<Float>, count V: Int) -> [Int] {
    var keys = [UInt32](unsafeUninitializedCapacity: V) { b, c in
        for i in 0..<V {
            let z = logits[i]
            let bits = z == 0 ? 0 : z.bitPattern
            // Ascending order of floats as unsigned integers, then complemented: descending.
            let ascending = bits & 0x8000_0000 != 0 ? ~bits : bits | 0x8000_0000
            b[i] = ~ascending
        }
        c = V
    }
    var ids = [Int32](unsafeUninitializedCapacity: V) { b, c in
        for i in 0..<V { b[i] = Int32(i) }
        c = V
    }
    var keys2 = [UInt32](repeating: 0, count: V), ids2 = [Int32](repeating: 0, count: V)
    var counts = [Int](repeating: 0, count: 2048)
    for shift in [0, 11, 22] as [UInt32] {
        keys.withUnsafeBufferPointer { k in
            ids.withUnsafeBufferPointer { d in
                keys2.withUnsafeMutableBufferPointer { k2 in
                    ids2.withUnsafeMutableBufferPointer { d2 in
                        counts.withUnsafeMutableBufferPointer { c in
                            for j in 0..<2048 { c[j] = 0 }
                            for i in 0..<V { c[Int((k[i] >> shift) & 2047)] += 1 }
                            var sum = 0
                            for j in 0..<2048 { let x = c[j]; c[j] = sum; sum += x }
                            for i in 0..<V {
                                let b = Int((k[i] >> shift) & 2047)
                                k2[c[b]] = k[i]
                                d2[c[b]] = d[i]
                                c[b] += 1
                            }
                        }
                    }
                }
            }
        }
        swap(&keys, &keys2)
        swap(&ids, &ids2)
    }
    return ids.map { Int($0) }
}

extension CausalLM {
    /// Whether every layer can decode token by token through a ``KVCache`` (exact attention); other
    /// variants are generated by recomputing the whole prefix at each token.
    var decodesWithCache: Bool { config.attention.allSatisfy { $0 == .exact } }

    /// Runs `tokens` (one sequence, positions `cache.lengths[0] ..<`) through the model, appending
    /// their keys and values to `cache`; returns the logits of the last token `[V]`. The layer is
    /// the forward pass's own (``decoderLayer``); only its attention reads the cache. A cache with
    /// sliding-window layers takes at most ``LongAttention/KVCache/maxAppend`` tokens per append
    /// (its rings are sized for that): longer inputs, a prompt, go through in chunks of that many;
    /// other caches take chunks of ``prefillChunk``, which bounds a step's activations.
    public func step(_ tokens: [Int32], cache: inout KVCache, threads: Int?) throws -> [Float] {
        // Sliding layers' rings take at most maxAppend rows per append; full layers take any, but a
        // long prompt still goes through in chunks of prefillChunk, which bounds the activations a
        // step holds (a 4K-token prompt in one pass held ~350 MB of them at SmolLM2's width).
        let chunk = cache.windows.contains { $0 != nil } ? cache.maxAppend : Self.prefillChunk
        var first = 0
        while tokens.count - first > chunk {
            _ = try step(Array(tokens[first..<(first + chunk)]), cache: &cache, threads: threads, logits: false)
            first += chunk
        }
        return try step(Array(tokens[first...]), cache: &cache, threads: threads, logits: true)
    }

    /// ``step(_:cache:threads:)`` for one append's worth of tokens; the last token's logits only when `logits`.
    func step(_ tokens: [Int32], cache: inout KVCache, threads: Int?, logits wantLogits: Bool) throws -> [Float] {
        try step(tokens, cache: &cache, threads: threads, logitRows: wantLogits ? 1 : 0)
    }

    /// ``step(_:cache:threads:)`` for one append's worth of tokens, returning the logits of its last
    /// `logitRows` tokens, `[logitRows, V]` row-major (none for 0). The final norm and the LM head
    /// run on those rows only, as one product of `logitRows` rows (under `.fast`, ≤ 16 rows take the
    /// integer kernels, each row bitwise as if alone).
    func step(_ tokens: [Int32], cache: inout KVCache, threads: Int?, logitRows: Int) throws -> [Float] {
        let c = config
        let (n, D, V, H, Hkv, hd) = (tokens.count, c.hiddenSize, c.vocabSize, c.heads, c.kvHeads, c.headDim)
        let start = cache.lengths[0], threads = threads ?? Parallel.defaultThreads
        try checkTokens(tokens, batch: 1, length: n)
        var x = try embed(tokens)
        let pass = ForwardPass(batch: 1, length: n, tokens: tokens, logits: try Tensor(zeros: [1]))
        for layer in 0..<c.layers {
            _ = try decoderLayer(layer, x: &x, batch: 1, length: n, firstPosition: start, keep: false, pass: pass,
                                 threads: threads) { q, k, v in
                // Token-major rows read in place through strides, the output written token-major.
                let qh = try q.reshaped([1, n, H, hd]).permuted([0, 2, 1, 3])
                try cache.append(layer: layer, keys: try k.reshaped([1, n, Hkv, hd]).permuted([0, 2, 1, 3]),
                                 values: try v.reshaped([1, n, Hkv, hd]).permuted([0, 2, 1, 3]))
                let attentionThreads = Self.attentionThreads(positions: cache.positions(layer: layer).count, rows: n,
                                                             threads: threads)
                if config.sinks(of: layer) > 0 {
                    return (try streamingDecodeAttention(layer: layer, q: q, cache: cache, length: n, firstPosition: start,
                                                         threads: attentionThreads), .none)
                }
                let out = try decodeAttention(queries: qh, cache: cache, layer: layer, scale: attentionScale,
                                              alibi: attentionMask(layer: layer).alibi, slidingWindow: config.window(of: layer),
                                              outputLayout: .tokenMajor, threads: attentionThreads)
                return (try out.reshaped([n, H * hd]), .none)
            }
        }
        let r = min(max(logitRows, 0), n)
        guard r > 0 else { return [] }
        // Only the last r tokens' logits are needed.
        var hF = try Tensor(uninitialized: [r, D])
        norm("model.norm.weight", x.unsafeBaseAddress + (n - r) * D, hF.unsafeMutableBaseAddress(), rstd: nil, rows: r, width: D)
        var logits = [Float](repeating: 0, count: r * V)
        logits.withUnsafeMutableBufferPointer {
            projectWeight(hF.unsafeBaseAddress, headName, $0.baseAddress!, rows: r, in: D, out: V, threads: threads)
        }
        return logits
    }

    /// Threads for one decoding call's attention over `positions` cached positions and `rows` query
    /// rows: one below 512 positions × rows, where a second worker is not worth its start (measured
    /// on Zen 3, SmolLM2 on 2 threads: no gain at 300 positions, 1.11× at 1K, 1.26× at 3.8K).
    static func attentionThreads(positions: Int, rows: Int, threads: Int) -> Int {
        positions * rows < 512 ? 1 : threads
    }

    /// A KV cache for `positions` positions: full layers hold them all, sliding layers a ring of
    /// `W + maxAppend - 1` rows, with `maxAppend = min(chunk, prefillChunk)` (the longest append:
    /// ``step(_:cache:threads:)`` feeds a longer prompt in chunks of that many tokens).
    public func makeCache(positions: Int, chunk: Int, type: KVCacheType = .float32) throws -> KVCache {
        try KVCache(layers: config.layers, batch: 1, kvHeads: config.kvHeads, capacity: positions, headDimension: config.headDim,
                    type: type, windows: (0..<config.layers).map { config.window(of: $0) },
                    maxAppend: max(1, min(chunk, Self.prefillChunk)), sinks: (0..<config.layers).map { config.sinks(of: $0) })
    }

    /// The longest prefill chunk through a cache with sliding-window layers: their rings hold
    /// `W + prefillChunk - 1` positions (a prompt in one append would make them as long as the prompt).
    public static let prefillChunk = 512

    /// Generates up to `maxTokens` tokens after `prompt`: the prompt is prefilled in one pass, then
    /// each token is decoded against a ``KVCache`` of `cacheType` (exact-attention models; other
    /// variants recompute the prefix per token). Stops at `eos` (not included) or the length.
    public func generate(prompt: [Int32], maxTokens: Int, sampling: SamplingOptions = SamplingOptions(),
                         eos: Int32? = nil, cacheType: KVCacheType = .float32, threads: Int? = nil) throws -> [Int32] {
        var out = [Int32]()
        try generate(prompt: prompt, maxTokens: maxTokens, sampling: sampling, stopTokens: eos.map { [$0] } ?? [],
                     cacheType: cacheType, threads: threads) { t in out.append(t); return true }
        return out
    }

    /// Generates after `prompt`, handing each new token to `emit` as soon as it is chosen (return
    /// false to stop). Stops at any of `stopTokens` (not emitted) or after `maxTokens`. Exact-attention
    /// models prefill once and decode against a ``KVCache`` of `cacheType`; other variants recompute
    /// the prefix per token. Non-finite logits stop the generation with
    /// ``ModelError/nonFiniteLogits(step:token:)`` naming the step.
    ///
    /// `source`, when given, computes the logits instead of this process's KV cache (a run across
    /// processes, or one that records them); the sampling, stops and emission are the same.
    public func generate(prompt: [Int32], maxTokens: Int, sampling: SamplingOptions = SamplingOptions(),
                         stopTokens: [Int32], cacheType: KVCacheType = .float32, threads: Int? = nil,
                         source: LogitSource? = nil, emit: (Int32) throws -> Bool) throws {
        try sampling.validate()
        guard !prompt.isEmpty else { throw ModelError.tooFewTokens(input: "the prompt", count: 0, minimum: 1) }
        try requireOption(maxTokens >= 0, "max tokens", maxTokens, ">= 0")
        try checkTokens(prompt, batch: 1, length: prompt.count)
        let (total, overflow) = prompt.count.addingReportingOverflow(maxTokens)
        guard !overflow, total <= 1 << 22 else {
            throw ModelError.sequenceTooLong(length: overflow ? Int.max : total, limit: 1 << 22)
        }
        var rng = SplitMix64(seed: sampling.seed)
        let V = config.vocabSize
        var produced = 0
        var history = sampling.repetitionPenalty != 1 ? prompt : []
        func choose(_ logits: UnsafeMutablePointer<Float>) throws -> Int32 {
            if let bad = (0..<V).first(where: { !logits[$0].isFinite }) {
                throw ModelError.nonFiniteLogits(step: produced, token: bad)
            }
            let t = sampling.pick(logits, vocab: V, rng: &rng, history: history)
            if sampling.repetitionPenalty != 1 { history.append(t) }
            return t
        }
        if decodesWithCache || source != nil {
            let source = source ?? CachedDecoding(model: self, cacheType: cacheType, threads: threads)
            guard maxTokens > 0 else { return }
            var logits = try source.prefill(prompt, maxTokens: maxTokens)
            while produced < maxTokens {
                let t = try logits.withUnsafeMutableBufferPointer { try choose($0.baseAddress!) }
                if stopTokens.contains(t) { return }
                produced += 1
                guard try emit(t), produced < maxTokens else { return }
                logits = try source.next(t)
            }
            return
        }
        var context = prompt
        while produced < maxTokens {
            let pass = try forward(tokens: context, batch: 1, length: context.count, threads: threads, logitRows: [context.count - 1])
            let t = try choose(pass.logits.unsafeMutableBaseAddress())
            if stopTokens.contains(t) { return }
            produced += 1
            context.append(t)
            guard try emit(t) else { return }
        }
    }
}

/// Where a generation's logits come from: the prompt's last position after a prefill, then one
/// step per chosen token. ``CachedDecoding`` is this process's KV cache; a distributed run
/// supplies its own, and a caller may wrap either to record the logits.
public protocol LogitSource: AnyObject {
    /// Prefills `prompt` (room for `maxTokens` more) and returns the logits `[V]` of its last position.
    func prefill(_ prompt: [Int32], maxTokens: Int) throws -> [Float]
    /// Appends `token` (after the prompt and the tokens before it) and returns the logits of its position.
    func next(_ token: Int32) throws -> [Float]
}

/// ``LogitSource`` of ``CausalLM/generate(prompt:maxTokens:sampling:stopTokens:cacheType:threads:source:emit:)``
/// for exact-attention models: the prompt in one ``CausalLM/step(_:cache:threads:)``, then a step per token.
public final class CachedDecoding: LogitSource {
    public let model: CausalLM
    public let cacheType: KVCacheType, threads: Int?
    public private(set) var cache: KVCache?

    public init(model: CausalLM, cacheType: KVCacheType = .float32, threads: Int? = nil) {
        (self.model, self.cacheType, self.threads) = (model, cacheType, threads)
    }

    public func prefill(_ prompt: [Int32], maxTokens: Int) throws -> [Float] {
        var c = try model.makeCache(positions: prompt.count + maxTokens, chunk: prompt.count, type: cacheType)
        defer { cache = c }
        return try model.step(prompt, cache: &c, threads: threads)
    }

    public func next(_ token: Int32) throws -> [Float] {
        guard var c = cache else { throw ModelError.notPrefilled }
        cache = nil
        defer { cache = c }
        return try model.step([token], cache: &c, threads: threads)
    }
}

/// A ``LogitSource`` that keeps every logits vector another one produces (prefill first, then
/// one per step): what `--logits-out` writes.
public final class RecordingLogits: LogitSource {
    public let inner: LogitSource
    public private(set) var rows: [[Float]] = []
    public init(_ inner: LogitSource) { self.inner = inner }
    public func prefill(_ prompt: [Int32], maxTokens: Int) throws -> [Float] {
        let z = try inner.prefill(prompt, maxTokens: maxTokens)
        rows.append(z)
        return z
    }
    public func next(_ token: Int32) throws -> [Float] {
        let z = try inner.next(token)
        rows.append(z)
        return z
    }
}
