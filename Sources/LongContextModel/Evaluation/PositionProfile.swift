import AttentionTensor
import CAttentionKernels
import Foundation

extension CausalLM {
    /// The next-token loss (nats) of every position of `tokens [B, T]`: entry `b·T + t` is
    /// `−log p(tokens[b, t + 1] | tokens[b, ...t])`; the last position of each sequence has no
    /// target and gets NaN. A forward pass only (no activations kept).
    public func tokenLosses(tokens: [Int32], batch B: Int, length T: Int, threads: Int? = nil) throws -> [Float] {
        try checkTokens(tokens, batch: B, length: T)
        // A large vocabulary × a long window: the LM head in blocks of rows (32K × 262K logits are 34 GB).
        if B * T * config.vocabSize > 1 << 26 { return try blockedTokenLosses(tokens: tokens, batch: B, length: T, threads: threads) }
        let pass = try forward(tokens: tokens, batch: B, length: T, threads: threads)
        let V = config.vocabSize, zp = pass.logits.unsafeMutableBaseAddress()
        var losses = [Float](repeating: .nan, count: B * T)
        for b in 0..<B {
            for t in 0..<(T - 1) {
                var target = tokens[b * T + t + 1]
                losses[b * T + t] = Float(ak_cross_entropy_rows(zp + (b * T + t) * V, V, 1, V, &target, 0, 0))
            }
        }
        return losses
    }
}

extension CausalLM {
    /// The residual stream after the last layer, `[B·T, D]` (before the final norm): the forward
    /// pass without its LM head.
    func finalStream(tokens: [Int32], batch B: Int, length T: Int, threads: Int) throws -> Tensor {
        var x = try embed(tokens)
        let pass = ForwardPass(batch: B, length: T, tokens: tokens, logits: try Tensor(zeros: [1]))
        for layer in 0..<config.layers {
            _ = try decoderLayer(layer, x: &x, batch: B, length: T, firstPosition: 0, keep: false, pass: pass, threads: threads) { q, k, v in
                try attend(layer: layer, q: q, k: k, v: v, batch: B, length: T, keep: false, threads: threads)
            }
        }
        return x
    }

    /// ``tokenLosses(tokens:batch:length:threads:)`` with the final norm and LM head applied to
    /// blocks of 128 rows: the same losses in `O(128·V)` memory for the logits.
    func blockedTokenLosses(tokens: [Int32], batch B: Int, length T: Int, threads: Int?) throws -> [Float] {
        let threads = threads ?? Parallel.defaultThreads
        let x = try finalStream(tokens: tokens, batch: B, length: T, threads: threads)
        let (D, V, N) = (config.hiddenSize, config.vocabSize, B * T), block = 128
        var losses = [Float](repeating: .nan, count: N)
        var hF = try Tensor(uninitialized: [block, D]), logits = try Tensor(uninitialized: [block, V])
        let hp = hF.unsafeMutableBaseAddress(), zp = logits.unsafeMutableBaseAddress()
        var r0 = 0
        while r0 < N {
            let rows = min(block, N - r0)
            norm("model.norm.weight", x.unsafeBaseAddress + r0 * D, hp, rstd: nil, rows: rows, width: D)
            project(UnsafePointer(hp), matrix(headName), zp, rows: rows, in: D, out: V, threads: threads, matmul: matmul)
            for i in 0..<rows {
                let r = r0 + i, t = r % T
                guard t < T - 1 else { continue }
                var target = tokens[r + 1]
                losses[r] = Float(ak_cross_entropy_rows(zp + i * V, V, 1, V, &target, 0, 0))
            }
            r0 += rows
        }
        return losses
    }
}

/// Bits per byte against position in the window: the mean next-token loss at each position over
/// non-overlapping windows of a token stream. Position t's loss is that of predicting token t + 1
/// from the t + 1 tokens before it, so the curve shows how much each extra token of context is worth
/// (and where a model stops using it, or breaks, beyond its training window).
public struct PositionProfile: Sendable, Codable {
    /// Tokens per window.
    public let window: Int
    /// Windows averaged.
    public let windows: Int
    /// Mean loss in bits per byte at each position `0..<window − 1` (for a byte-level model; for a
    /// tokenized one, bits per token).
    public let bitsPerByte: [Double]
    /// Mean loss in nats per token at each position `0..<window − 1` (tokenized models report this,
    /// and its exponential, the perplexity).
    public let nats: [Double]

    /// The mean loss in nats per token over positions `range` (clamped to the window).
    public func meanNats(positions range: Range<Int>) -> Double {
        let r = max(0, range.lowerBound)..<min(nats.count, range.upperBound)
        guard !r.isEmpty else { return .nan }
        return nats[r].reduce(0, +) / Double(r.count)
    }

    /// The mean over every scored position of every window.
    public var mean: Double { bitsPerByte.reduce(0, +) / Double(max(1, bitsPerByte.count)) }

    /// The mean over positions `range` (clamped to the window).
    public func mean(positions range: Range<Int>) -> Double {
        let r = max(0, range.lowerBound)..<min(bitsPerByte.count, range.upperBound)
        guard !r.isEmpty else { return .nan }
        return bitsPerByte[r].reduce(0, +) / Double(r.count)
    }

    /// Means over consecutive bins of `width` positions (the last may be shorter): a chartable curve.
    public func binned(_ width: Int) -> [(start: Int, bitsPerByte: Double)] {
        stride(from: 0, to: bitsPerByte.count, by: max(1, width)).map { s in
            (s, mean(positions: s..<(s + width)))
        }
    }

    /// Profiles `model` over non-overlapping windows of `window` tokens cut from each document of
    /// `documents` in turn (a window never spans two documents), `batch` windows per forward pass.
    ///
    /// With `span` (a multiple of `window`) the text is cut into spans of that length first and
    /// each span read as `span / window` independent windows: exactly the bytes a profile at
    /// window `span` reads, so a short window and a long one are compared on the same text.
    /// `maxWindows` (0: all) keeps that many spans, spread evenly over the documents.
    /// `bos`, when given, replaces the first token of every window (as llama.cpp's perplexity tool
    /// does for a model that adds BOS: a window cut from running text then starts as a text does).
    /// `progress` receives (windows done, windows) after each forward pass.
    public init(model: CausalLM, documents: [[Int32]], window: Int, span: Int? = nil, maxWindows: Int = 0, batch: Int = 4,
                threads: Int? = nil, bos: Int32? = nil, progress: (Int, Int) -> Void = { _, _ in }) throws {
        let span = span ?? window
        try requireOption(window >= 2, "window", window, ">= 2 (position profile)")
        try requireOption(span >= window && span % window == 0, "span", span, "a multiple of the window \(window)")
        try requireOption(batch >= 1, "batch", batch, ">= 1")
        try requireOption(maxWindows >= 0, "maxWindows", maxWindows, ">= 0")
        var spans = [(doc: Int, start: Int)]()
        for (d, doc) in documents.enumerated() {
            for s in stride(from: 0, through: doc.count - span, by: span) { spans.append((d, s)) }
        }
        if maxWindows > 0 && spans.count > maxWindows {
            // Spread evenly over the documents rather than the first few.
            spans = (0..<maxWindows).map { spans[$0 * spans.count / maxWindows] }
        }
        let starts = spans.flatMap { s in (0..<(span / window)).map { (doc: s.doc, start: s.start + $0 * window) } }
        let count = starts.count
        guard count >= 1 else {
            throw ModelError.tooFewTokens(input: "the longest document", count: documents.map(\.count).max() ?? 0, minimum: span)
        }
        var sums = [Double](repeating: 0, count: window - 1)
        var w = 0
        while w < count {
            let b = min(batch, count - w)
            var slice = [Int32]()
            slice.reserveCapacity(b * window)
            for (d, s) in starts[w..<(w + b)] {
                slice += documents[d][s..<(s + window)]
                if let bos { slice[slice.count - window] = bos }
            }
            let losses = try model.tokenLosses(tokens: slice, batch: b, length: window, threads: threads)
            for i in 0..<b {
                for t in 0..<(window - 1) { sums[t] += Double(losses[i * window + t]) }
            }
            w += b
            progress(w, count)
        }
        self.window = window
        self.windows = count
        self.nats = sums.map { $0 / Double(count) }
        self.bitsPerByte = sums.map { $0 / Double(count) / M_LN2 }
        guard bitsPerByte.allSatisfy(\.isFinite) else { throw ModelError.nonFiniteLoss(step: nil) }
    }
}
