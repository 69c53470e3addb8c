import AttentionTensor
import Foundation

/// Perplexity as llama.cpp's perplexity tool measures it, so the two can be compared figure for figure.
public struct PerplexityResult: Sendable {
    /// exp(mean loss) over every scored token.
    public let perplexity: Double
    /// Mean negative log-likelihood in nats.
    public let meanLoss: Double
    /// Tokens scored, tokens in the text.
    public let scored: Int, textTokens: Int
    /// Each chunk's perplexity, in order.
    public let chunks: [Double]
}

extension CausalLM {
    /// The negative log-likelihood of `target` under the logits `row [V]` (float64 log-softmax),
    /// or nil when the logits are not finite.
    public static func tokenLoss(_ row: UnsafePointer<Float>, vocab V: Int, target: Int) -> Double? {
        var m = -Double.infinity
        for v in 0..<V { m = max(m, Double(row[v])) }
        guard m.isFinite else { return nil }
        var s = 0.0
        for v in 0..<V { s += Foundation.exp(Double(row[v]) - m) }
        return m + Foundation.log(s) - Double(row[target])
    }

    /// `tokens` (the whole text, tokenized once) cut into consecutive chunks of `context` tokens (a
    /// last partial chunk is dropped); with `bos`, the first token of each chunk is replaced by it.
    /// In every chunk the tokens at positions `context/2 + 1 … context − 1` are scored, each from
    /// the logits one position before it (only those rows of the LM head are computed). Losses are
    /// summed in float64 over a float64 log-softmax of the float32 logits. `progress` receives
    /// (chunk, chunks, running perplexity) after each chunk.
    ///
    /// `chunkLoss`, when given, scores a chunk instead of this process's forward pass: it receives
    /// the chunk's ids and the rows scored (row `j` predicts id `j + 1`) and returns the summed
    /// loss (each term ``tokenLoss(_:vocab:target:)``) — a run across processes.
    ///
    /// `rowsPerStep`, when given, computes each chunk's logits as decoding does
    /// (``stepwiseLogits(tokens:firstRow:rowsPerStep:cacheType:threads:)``: through a KV cache that
    /// many tokens at a time), so that under `.fast` the integer kernels' perplexity is measured.
    public func perplexity(tokens: [Int32], context C: Int, bos: Int32?, threads: Int? = nil, rowsPerStep: Int? = nil,
                           chunkLoss: ((_ chunk: [Int32], _ rows: [Int]) throws -> Double)? = nil,
                           progress: (Int, Int, Double) -> Void = { _, _, _ in }) throws -> PerplexityResult {
        try requireOption(C >= 4, "context", C, "at least 4 tokens (perplexity)")
        let chunks = tokens.count / C
        guard chunks >= 1 else {
            throw ModelError.tooFewTokens(input: "the text", count: tokens.count, minimum: C)
        }
        let first = C / 2, V = config.vocabSize
        let rows = Array(first..<(C - 1))
        var total = 0.0, count = 0
        var perChunk = [Double]()
        for i in 0..<chunks {
            var chunk = Array(tokens[(i * C)..<((i + 1) * C)])
            if let bos { chunk[0] = bos }
            var loss = 0.0
            if let score = chunkLoss {
                loss = try score(chunk, rows)
            } else if let rowsPerStep {
                let z = try stepwiseLogits(tokens: Array(chunk[..<(C - 1)]), firstRow: first, rowsPerStep: rowsPerStep,
                                           threads: threads)
                for (r, j) in rows.enumerated() {
                    guard let l = Self.tokenLoss(z.unsafeBaseAddress + r * V, vocab: V, target: Int(chunk[j + 1])) else {
                        throw ModelError.nonFiniteLogitsAt(sequence: i, position: j)
                    }
                    loss += l
                }
            } else {
                let pass = try forward(tokens: chunk, batch: 1, length: C, threads: threads, logitRows: rows)
                let z = pass.logits.unsafeBaseAddress
                for (r, j) in rows.enumerated() {
                    guard let l = Self.tokenLoss(z + r * V, vocab: V, target: Int(chunk[j + 1])) else {
                        throw ModelError.nonFiniteLogitsAt(sequence: i, position: j)
                    }
                    loss += l
                }
            }
            total += loss
            count += rows.count
            perChunk.append(Foundation.exp(loss / Double(rows.count)))
            progress(i, chunks, Foundation.exp(total / Double(count)))
        }
        let mean = total / Double(count)
        return PerplexityResult(perplexity: Foundation.exp(mean), meanLoss: mean, scored: count, textTokens: tokens.count, chunks: perChunk)
    }
}
