import AttentionTensor
import Foundation
@testable import LongContextModel
import XCTest

/// The pieces of generation around the model: min-p and the repetition penalty (the distributions
/// they sample from), stop strings found across streamed pieces, and UTF-8 kept whole when bytes
/// arrive one at a time.
final class GenerationTextTests: XCTestCase {
    /// Frequencies of `draws` samples from `logits` under `s`.
    func frequencies(_ logits: [Float], _ s: SamplingOptions, history: [Int32] = [], draws: Int = 40000) -> [Double] {
        var rng = SplitMix64(seed: 99)
        var counts = [Int](repeating: 0, count: logits.count)
        for _ in 0..<draws {
            var z = logits
            let t = z.withUnsafeMutableBufferPointer { s.pick($0.baseAddress!, vocab: logits.count, rng: &rng, history: history) }
            counts[Int(t)] += 1
        }
        return counts.map { Double($0) / Double(draws) }
    }

    func testMinPDropsTokensBelowAFractionOfTheMostLikely() {
        // Probabilities ∝ 8, 4, 2, 1 (ratios to the top: 1, 0.5, 0.25, 0.125).
        let logits: [Float] = [3, 2, 1, 0].map { Float($0) * Float(Foundation.log(2.0)) }
        let f = frequencies(logits, SamplingOptions(temperature: 1, minP: 0.3))
        // Kept: 8 and 4 (≥ 0.3 × 8), renormalised to 2/3 and 1/3.
        XCTAssertEqual(f[0], 2.0 / 3, accuracy: 0.01)
        XCTAssertEqual(f[1], 1.0 / 3, accuracy: 0.01)
        XCTAssertEqual(f[2], 0)
        XCTAssertEqual(f[3], 0)
        // min-p 0 keeps the whole distribution: 8/15, 4/15, 2/15, 1/15.
        let all = frequencies(logits, SamplingOptions(temperature: 1))
        for (i, e) in [8.0, 4, 2, 1].enumerated() { XCTAssertEqual(all[i], e / 15, accuracy: 0.01) }
        // Either side of token 2's ratio 0.25 (float rounding puts it a hair from 0.25 itself).
        let below = frequencies(logits, SamplingOptions(temperature: 1, minP: 0.249))
        XCTAssertEqual(below[2], 2.0 / 14, accuracy: 0.01)
        XCTAssertEqual(below[3], 0)
        XCTAssertEqual(frequencies(logits, SamplingOptions(temperature: 1, minP: 0.251))[2], 0)
    }

    func testRepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits() {
        var rng = SplitMix64(seed: 1)
        // Token 0 leads (2.0) but was seen: 2.0 / 1.5 = 1.33 < 1.5 (token 1) → greedy picks 1.
        var z: [Float] = [2.0, 1.5, -1.0]
        let s = SamplingOptions(repetitionPenalty: 1.5)
        XCTAssertEqual(z.withUnsafeMutableBufferPointer { s.pick($0.baseAddress!, vocab: 3, rng: &rng, history: [0, 0, 2]) }, 1)
        XCTAssertEqual(z, [2.0 / 1.5, 1.5, -1.5], "each distinct id penalised once; negative logits multiplied")
        // Without history nothing changes.
        z = [2.0, 1.5, -1.0]
        XCTAssertEqual(z.withUnsafeMutableBufferPointer { s.pick($0.baseAddress!, vocab: 3, rng: &rng, history: []) }, 0)
        // Sampling: probabilities ∝ e^{z}, with token 0's logit divided by 2 (ln 4 → ln 2).
        let logits: [Float] = [Float(Foundation.log(4.0)), 0]
        let f = frequencies(logits, SamplingOptions(temperature: 1, repetitionPenalty: 2), history: [0])
        XCTAssertEqual(f[0], 2.0 / 3, accuracy: 0.01)
    }

    func testBadSamplingOptionsAreRefused() {
        XCTAssertThrowsError(try SamplingOptions(minP: -0.1).validate())
        XCTAssertThrowsError(try SamplingOptions(minP: 1.5).validate())
        XCTAssertThrowsError(try SamplingOptions(repetitionPenalty: 0).validate())
        XCTAssertThrowsError(try SamplingOptions(repetitionPenalty: .infinity).validate())
        XCTAssertThrowsError(try SamplingOptions(repetitionPenalty: .nan).validate())
        XCTAssertNoThrow(try SamplingOptions(temperature: 0.7, topK: 40, topP: 0.9, minP: 0.05, repetitionPenalty: 1.1).validate())
    }

    /// Every way of cutting a text into pieces finds the stop string at the same place and emits
    /// exactly the text before it.
    func testStopStringsAcrossPieces() {
        let text = "The answer is Paris.\nUser: next"
        for stop in ["\nUser:", "Paris", "is P", "t"] {
            let expected = String(text[..<text.range(of: stop)!.lowerBound])
            for cut1 in 0...text.count {
                for cut2 in cut1...min(text.count, cut1 + 7) {
                    let a = String(text.prefix(cut1)), b = String(text.dropFirst(cut1).prefix(cut2 - cut1)), c = String(text.dropFirst(cut2))
                    var s = StopStrings([stop, "never appears"])
                    var out = "", hit = false
                    for piece in [a, b, c] where !hit {
                        let (o, h) = s.feed(piece)
                        out += o
                        hit = h
                    }
                    if !hit { out += s.finish("") }
                    XCTAssertTrue(hit, "\(stop) cut at \(cut1), \(cut2)")
                    XCTAssertEqual(out, expected, "\(stop) cut at \(cut1), \(cut2)")
                }
            }
        }
        // No stop string: text passes through untouched, held-back prefixes flushed at the end.
        var s = StopStrings(["<|im"])
        var out = s.feed("Hello <").0
        out += s.feed("|i").0
        XCTAssertEqual(out, "Hello ")
        XCTAssertEqual(out + s.finish(""), "Hello <|i")
    }

    /// Bytes arriving one at a time come out as whole characters only, in order.
    func testByteStreamKeepsCharactersWhole() throws {
        let text = "a é 中文 🙂 z"
        var stream = TextCodec.bytes.streamingDecoder()
        var pieces = [String]()
        for b in Array(text.utf8) { pieces.append(try stream.push(Int32(b))) }
        pieces.append(try stream.finish())
        XCTAssertEqual(pieces.joined(), text)
        for p in pieces { XCTAssertFalse(p.contains("\u{FFFD}"), "a character was split: \(pieces)") }
        // A truncated character at the end becomes U+FFFD (not dropped, not a crash).
        var cut = TextCodec.bytes.streamingDecoder()
        for b in Array("x🙂".utf8).prefix(3) { _ = try cut.push(Int32(b)) }
        XCTAssertEqual(try cut.finish(), "\u{FFFD}")
    }

    /// A folder's chat template: chat_template.jinja first, else tokenizer_config.json's string or
    /// its list's "default"; anything else refused by name.
    func testFolderChatTemplates() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("templates-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func config(_ json: String) throws { try json.write(toFile: dir + "/tokenizer_config.json", atomically: true, encoding: .utf8) }
        XCTAssertNil(try LanguageModel.folderChatTemplate(dir))
        try config(#"{"chat_template": "A{{ messages[0].content }}"}"#)
        XCTAssertEqual(try LanguageModel.folderChatTemplate(dir)?.source, "A{{ messages[0].content }}")
        try config(#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#)
        XCTAssertEqual(try LanguageModel.folderChatTemplate(dir)?.source, "D")
        try config(#"{"chat_template": [{"name": "tool_use", "template": "T"}]}"#)
        XCTAssertThrowsError(try LanguageModel.folderChatTemplate(dir)) { XCTAssertTrue("\($0)".contains("default"), "\($0)") }
        try config(#"{"chat_template": 3}"#)
        XCTAssertThrowsError(try LanguageModel.folderChatTemplate(dir)) { XCTAssertTrue("\($0)".contains("chat_template"), "\($0)") }
        try config(#"{"chat_template": null}"#)
        XCTAssertNil(try LanguageModel.folderChatTemplate(dir))
        try "J{{ bos_token }}".write(toFile: dir + "/chat_template.jinja", atomically: true, encoding: .utf8)
        XCTAssertEqual(try LanguageModel.folderChatTemplate(dir)?.source, "J{{ bos_token }}")
        try "{% if %}".write(toFile: dir + "/chat_template.jinja", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try LanguageModel.folderChatTemplate(dir))
    }

    /// Sizes from options are checked (no trap on Int.max), and non-finite logits stop generation
    /// with an error naming the step (never a token 0 chosen from NaN).
    func testAbsurdLengthsAndNonFiniteLogitsAreRefused() throws {
        let c = try ModelConfig(vocabSize: 11, hiddenSize: 8, intermediateSize: 5, layers: 1, heads: 2, kvHeads: 1, headDim: 4)
        let m = try CausalLM(config: c, seed: 3)
        XCTAssertThrowsError(try m.generate(prompt: [1, 2], maxTokens: Int.max)) { XCTAssertTrue("\($0)".contains("tokens"), "\($0)") }
        XCTAssertThrowsError(try m.generate(prompt: [1, 2], maxTokens: 1 << 23))
        XCTAssertThrowsError(try m.generate(prompt: [1, 2], maxTokens: -1))
        m.parameters.pointer("model.norm.weight")[0] = .nan
        XCTAssertThrowsError(try m.generate(prompt: [1, 2], maxTokens: 3)) { error in
            XCTAssertTrue("\(error)".contains("step 0"), "\(error)")
        }
    }
}
