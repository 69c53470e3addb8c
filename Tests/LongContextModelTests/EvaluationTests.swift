import AttentionTensor
import Foundation
@testable import LongContextModel
import XCTest

/// The experiments' measuring instruments: per-position losses and profiles, passkey prompts and
/// scoring, the passkey fine-tune, Temp-LoRA without training.
final class EvaluationTests: XCTestCase {
    /// A tiny model with weights large enough to make its predictions far from uniform.
    func model(_ attention: LayerAttention = .exact, seed: UInt64 = 3, perturbed: Bool = true) throws -> CausalLM {
        let m = try CausalLM(config: try ModelConfig(vocabSize: ByteTokenizer.vocabSize, hiddenSize: 16, intermediateSize: 24,
                                                     layers: 2, heads: 4, kvHeads: 2, attention: [attention, attention]), seed: seed)
        guard perturbed else { return m }
        var rng = SplitMix64(seed: seed &+ 5)
        for e in m.parameters.entries where !e.name.hasSuffix("norm.weight") {
            for i in 0..<e.count { m.parameters.scalars[e.offset + i] = Float(0.3 * rng.nextNormal()) }
        }
        return m
    }

    /// Per-position losses agree with the mean loss, with a float64 log-softmax of the logits, and
    /// the last position of each sequence has none.
    func testTokenLossesMatchTheLoss() throws {
        let m = try model()
        let (B, T) = (3, 33)
        var rng = SplitMix64(seed: 2)
        let tokens = (0..<(B * T)).map { _ in Int32(rng.next() % 256) }
        let losses = try m.tokenLosses(tokens: tokens, batch: B, length: T)
        let r = try m.loss(tokens: tokens, batch: B, length: T, keepLogits: true)
        let finite = losses.filter { !$0.isNaN }
        XCTAssertEqual(finite.count, B * (T - 1))
        for b in 0..<B { XCTAssertTrue(losses[b * T + T - 1].isNaN) }
        XCTAssertEqual(finite.reduce(0) { $0 + Double($1) } / Double(finite.count), r.loss, accuracy: 1e-5 * r.loss)
        let logits = try XCTUnwrap(r.logits).scalars
        let V = ByteTokenizer.vocabSize
        for row in [0, 17, T + 5, 2 * T + 31] {
            let z = logits[(row * V)..<((row + 1) * V)].map(Double.init)
            let mx = z.max()!
            let lse = mx + log(z.reduce(0) { $0 + exp($1 - mx) })
            let expected = lse - z[Int(tokens[row + 1])]
            XCTAssertEqual(Double(losses[row]), expected, accuracy: 1e-5 * expected, "row \(row)")
        }
    }

    /// A profile averages the windows' per-position losses; windows never span two documents;
    /// `maxWindows` spreads the windows over the documents.
    func testPositionProfile() throws {
        let m = try model()
        var rng = SplitMix64(seed: 4)
        let docs = [70, 20, 45].map { n in (0..<n).map { _ in Int32(rng.next() % 256) } }
        let W = 16
        let p = try PositionProfile(model: m, documents: docs, window: W, batch: 3)
        // 70 → 4 windows, 20 → 1, 45 → 2.
        XCTAssertEqual(p.windows, 7)
        XCTAssertEqual(p.bitsPerByte.count, W - 1)
        var sums = [Double](repeating: 0, count: W - 1)
        for (d, n) in [(0, 4), (1, 1), (2, 2)] {
            for w in 0..<n {
                let l = try m.tokenLosses(tokens: Array(docs[d][(w * W)..<((w + 1) * W)]), batch: 1, length: W)
                for t in 0..<(W - 1) { sums[t] += Double(l[t]) }
            }
        }
        for t in 0..<(W - 1) { XCTAssertEqual(p.bitsPerByte[t], sums[t] / 7 / M_LN2, accuracy: 1e-5, "position \(t)") }
        XCTAssertEqual(p.mean, p.bitsPerByte.reduce(0, +) / Double(W - 1), accuracy: 1e-12)
        XCTAssertEqual(p.binned(4).count, 4)
        XCTAssertEqual(p.binned(4)[3].bitsPerByte, p.mean(positions: 12..<15), accuracy: 1e-12)
        // Spans of 32 read as two windows of 16: documents 70 → 2 spans, 20 → 0, 45 → 1; the
        // same text a profile at window 32 reads.
        let spanned = try PositionProfile(model: m, documents: docs, window: W, span: 32)
        XCTAssertEqual(spanned.windows, 6)
        var spanSums = [Double](repeating: 0, count: W - 1)
        for (d, s) in [(0, 0), (0, 16), (0, 32), (0, 48), (2, 0), (2, 16)] {
            let l = try m.tokenLosses(tokens: Array(docs[d][s..<(s + W)]), batch: 1, length: W)
            for t in 0..<(W - 1) { spanSums[t] += Double(l[t]) }
        }
        for t in 0..<(W - 1) { XCTAssertEqual(spanned.bitsPerByte[t], spanSums[t] / 6 / M_LN2, accuracy: 1e-5) }
        XCTAssertThrowsError(try PositionProfile(model: m, documents: docs, window: W, span: 24))
        let few = try PositionProfile(model: m, documents: docs, window: W, maxWindows: 2)
        XCTAssertEqual(few.windows, 2)
        XCTAssertThrowsError(try PositionProfile(model: m, documents: [[1, 2, 3]], window: W))
        XCTAssertThrowsError(try PositionProfile(model: m, documents: docs, window: 1))
    }

    /// Prompts are exactly the asked length, hold the needle once at a sentence boundary near the
    /// depth, and end with the question; impossible requests are refused.
    func testPasskeyPrompts() throws {
        for (L, depth, key) in [(98, 0.0, 50_000), (256, 0.0, 7), (256, 0.5, 31_742), (1024, 0.25, 123), (1024, 1.0, 9), (517, 0.75, 4_096)] {
            let p = try PasskeyTask.prompt(length: L, depth: depth, key: key)
            XCTAssertEqual(p.count, L)
            XCTAssertEqual(p[0], ByteTokenizer.bos)
            let text = ByteTokenizer.decode(p)
            XCTAssertTrue(text.hasSuffix(PasskeyTask.question))
            let needle = PasskeyTask.needle(key)
            XCTAssertEqual(text.components(separatedBy: needle).count, 2, "one needle")
            let at = text.range(of: needle)!.lowerBound
            let offset = text.utf8.distance(from: text.startIndex, to: at)
            let filler = L - PasskeyTask.minimumLength(key: key)
            // Within one filler sentence (at most 26 bytes) of the requested depth.
            XCTAssertLessThanOrEqual(abs(Double(offset) - depth * Double(filler)), 26, "L \(L) depth \(depth)")
            if offset > 0 { XCTAssertTrue(text[..<at].hasSuffix(". "), "at a sentence boundary") }
            XCTAssertTrue(text.hasSuffix(". " + PasskeyTask.question), "the question follows a whole sentence")
        }
        XCTAssertThrowsError(try PasskeyTask.prompt(length: 97, depth: 0, key: 50_000))
        XCTAssertThrowsError(try PasskeyTask.prompt(length: 256, depth: 1.5, key: 3))
        XCTAssertThrowsError(try PasskeyTask.prompt(length: 256, depth: 0.5, key: 0))
        XCTAssertThrowsError(try PasskeyTask.prompt(length: 256, depth: 0.5, key: 50_001))
        XCTAssertEqual(PasskeyTask.firstNumber(ByteTokenizer.encode(" 31742. Rem")), 31742)
        XCTAssertEqual(PasskeyTask.firstNumber(ByteTokenizer.encode("  is 12")), 12)
        XCTAssertNil(PasskeyTask.firstNumber(ByteTokenizer.encode(" the key")))
    }

    /// The passkey fine-tune trains on the answer only and lowers its loss; the scorer's grid has
    /// the asked shape, and a key the model cannot produce scores 0.
    func testPasskeyTuningAndScoring() throws {
        let m = try model(perturbed: false)
        var t = PasskeyTuning()
        (t.steps, t.batch, t.lengths, t.learningRate) = (30, 4, [112, 128], 1e-2)
        let losses = try t.run(m)
        XCTAssertEqual(losses.count, 30)
        XCTAssertLessThan(losses.suffix(5).reduce(0, +), 0.6 * losses.prefix(5).reduce(0, +))
        let r = try PasskeyResults(model: m, lengths: [112, 160], depths: [0, 1], trials: 2)
        XCTAssertEqual(r.accuracy.count, 2)
        XCTAssertEqual(r.accuracy[0].count, 2)
        XCTAssertEqual(r.accuracy.joined().max(), 0, "a tiny model tuned for 30 steps does not produce 5-digit keys")
        var bad = t
        bad.lengths = [100]
        XCTAssertThrowsError(try bad.run(m))
        XCTAssertThrowsError(try PasskeyResults(model: m, lengths: [], depths: [0], trials: 1))
    }

    /// A model that answers with a chosen key scores exactly the trials asked that key: all
    /// weights zero but the embedding and the head, it is a bigram table (the last token alone
    /// picks the next), here "s" (the question's last letter) → the key's digits → "." → ".".
    func testPasskeyScoringCountsTheRightAnswers() throws {
        // The first key PasskeyResults draws from `seed`, as it draws it; one with distinct digits.
        func keys(_ seed: UInt64, _ n: Int) -> [Int] {
            var rng = SplitMix64(seed: seed)
            return (0..<n).map { _ in Int(rng.next() % UInt64(PasskeyTask.maxKey)) + 1 }
        }
        let seed = (UInt64(1)...).first { Set(String(keys($0, 1)[0])).count == String(keys($0, 1)[0]).count }!
        let drawn = keys(seed, 4), key = drawn[0]
        XCTAssertFalse(drawn.dropFirst().contains(key))
        let m = try CausalLM(config: try ModelConfig(vocabSize: ByteTokenizer.vocabSize, hiddenSize: 16, intermediateSize: 24,
                                                     layers: 1, heads: 4, kvHeads: 2), seed: 1)
        for e in m.parameters.entries where !e.name.hasSuffix("norm.weight") {
            m.parameters.scalars.advanced(by: e.offset).update(repeating: 0, count: e.count)
        }
        let chain = Array("s" + String(key) + ".").map { Int(ByteTokenizer.encode(String($0))[0]) }
        let D = 16, embed = m.parameters.pointer("model.embed_tokens.weight"), head = m.parameters.pointer("lm_head.weight")
        for (slot, from) in chain.enumerated() {
            let to = slot + 1 < chain.count ? chain[slot + 1] : from   // "." → "."
            embed[from * D + slot] = 1
            head[to * D + slot] = 10
        }
        let prompt = try PasskeyTask.prompt(length: 112, depth: 0.5, key: 123)
        XCTAssertEqual(PasskeyTask.firstNumber(try m.generate(prompt: prompt, maxTokens: 8)), key)
        // Trials in order: depth 0 draws keys 0 and 1, depth 1 keys 2 and 3; only key 0 is answered.
        let r = try PasskeyResults(model: m, lengths: [112], depths: [0, 1], trials: 2, seed: seed)
        XCTAssertEqual(r.accuracy, [[0.5, 0]])
        XCTAssertEqual(r.mean, 0.25)
    }

    /// Temp-LoRA scores each chunk with the adapter trained on the chunks before it: the first
    /// chunk (B = 0) scores exactly as the base, later chunks of a repetitive text score better.
    func testTempLoRALearnsFromEarlierChunks() throws {
        let m = try model()
        let text = ByteTokenizer.encode(String(repeating: "In the beginning was the Word. ", count: 6))
        var o = TempLoRAOptions()
        (o.chunk, o.window, o.epochs, o.learningRate, o.targetModules) = (32, 32, 3, 1e-2, ["q_proj", "v_proj", "gate_proj", "down_proj"])
        let chunks = try runTempLoRA(model: m, tokens: text, options: o)
        XCTAssertEqual(chunks.count, (text.count + 31) / 32)
        XCTAssertEqual(chunks[0].adaptedLoss, chunks[0].baseLoss)
        for c in chunks.dropFirst(2) {
            XCTAssertLessThan(c.adaptedLoss, 0.9 * c.baseLoss, "chunk \(c.index): \(c.adaptedLoss) against the base's \(c.baseLoss)")
        }
        XCTAssertTrue(chunks.allSatisfy { $0.trainingSeconds > 0 })
    }

    /// With no training epochs Temp-LoRA scores the base alone: with and without are the same.
    func testTempLoRAWithoutTrainingIsTheBase() throws {
        let m = try model()
        let text = ByteTokenizer.encode(String(repeating: "In the beginning was the Word. ", count: 6))
        var o = TempLoRAOptions()
        (o.chunk, o.window, o.epochs) = (32, 32, 0)
        let chunks = try runTempLoRA(model: m, tokens: text, options: o)
        XCTAssertEqual(chunks.count, (text.count + 31) / 32)
        for c in chunks {
            XCTAssertEqual(c.adaptedLoss, c.baseLoss)
            XCTAssertEqual(c.trainingSeconds, 0, accuracy: 0.05)
        }
    }
}
