// The algorithms on hand-built vocabularies, with ids computed by hand: no model files needed.

import Foundation
import XCTest
@testable import Tokenizers

final class TokenizerAlgorithmTests: XCTestCase {
    /// 256 byte tokens (byte b is id b), then the merged tokens, then a control token.
    static func tinyByteLevel(pre: String = "gpt2") -> TokenizerVocabulary {
        var tokens = (0..<256).map { String(byteLevelCharacter[$0]) }
        let merges = ["t h", "th e", "Ġ c", "a t", "Ġc at", "h e"]
        for m in merges { tokens.append(m.replacingOccurrences(of: " ", with: "")) }   // 256 th, 257 the, 258 Ġc, 259 at, 260 Ġcat, 261 he
        tokens.append("<|end|>")                                                      // 262
        var types = [Int32](repeating: 1, count: tokens.count)
        types[262] = 3
        return TokenizerVocabulary(model: .bytePairEncoding(pre: pre), tokens: tokens, tokenTypes: types, merges: merges, eosID: 262)
    }

    func testByteLevelMergesByRank() throws {
        let t = try Tokenizer(Self.tinyByteLevel())
        // "the": (t,h) rank 0 before (h,e) rank 5, then (th,e); " cat": (a,t) rank 3 before (Ġ,c)? no: (Ġ,c) is rank 2.
        XCTAssertEqual(t.encode("the"), [257])
        XCTAssertEqual(t.encode(" cat"), [260])
        // " she": only (h,e) applies.
        XCTAssertEqual(t.encode(" she"), [32, 115, 261])
        XCTAssertEqual(t.encode("the cat she"), [257, 260, 32, 115, 261])
        // A control token written in the text is one id; EOS is not added (addEOS false).
        XCTAssertEqual(t.encode("the<|end|> cat"), [257, 262, 260])
        XCTAssertEqual(t.encode("<|end|><|end|>"), [262, 262])
        XCTAssertEqual(t.encode("<|end|", addSpecial: true), [60, 124, 101, 110, 100, 124])
        XCTAssertEqual(try t.decode([257, 262, 260]), "the<|end|> cat")
        XCTAssertEqual(try t.decode([257, 262, 260], skipSpecial: true), "the cat")
        XCTAssertEqual(t.endOfGenerationIDs, [262])
        XCTAssertTrue(t.isEndOfGeneration(262))
        XCTAssertFalse(t.isEndOfGeneration(257))
        XCTAssertEqual(t.tokenText(258), "Ġc")
        XCTAssertNil(t.tokenText(263))
        XCTAssertThrowsError(try t.decode([263])) { XCTAssertEqual($0 as? TokenizerError, .invalidID(263)) }
        XCTAssertThrowsError(try t.decode([-1])) { XCTAssertEqual($0 as? TokenizerError, .invalidID(-1)) }
        var g = SplitMix(state: 7)
        for _ in 0..<200 {
            let s = randomText(&g, length: Int(g.next() % 40))
            XCTAssertEqual(try t.decode(t.encode(s)), s)
        }
    }

    func testGPT2PreTokenizerSplits() throws {
        func pieces(_ s: String, _ kind: PreTokenizerKind) -> [String] {
            var s = s
            return s.withUTF8 { b -> [String] in
                var out: [String] = []
                guard let base = b.baseAddress else { return out }
                PreTokenizer(p: base).split(kind, 0, b.count) { out.append(String(decoding: UnsafeBufferPointer(start: base + $0, count: $1 - $0), as: UTF8.self)) }
                return out
            }
        }
        XCTAssertEqual(pieces("Hello world", .gpt2), ["Hello", " world"])
        XCTAssertEqual(pieces("don't  stop", .gpt2), ["don", "'t", " ", " stop"])
        XCTAssertEqual(pieces("a  b   c\n\n d  ", .gpt2), ["a", " ", " b", "  ", " c", "\n\n", " d", "  "])
        XCTAssertEqual(pieces("x\ty\t\tz", .gpt2), ["x", "\t", "y", "\t", "\t", "z"])
        XCTAssertEqual(pieces("1234 abc12 !!?", .gpt2), ["1234", " abc", "12", " !!?"])
        XCTAssertEqual(pieces("1234 x", .gpt2Digits), ["1", "2", "3", "4", " x"])
        XCTAssertEqual(pieces("a 12", .gpt2Digits), ["a", " ", "1", "2"])
        XCTAssertEqual(pieces("I'M 12345 hi\n\n  yo\tx", .llama3(maxDigits: 3)), ["I", "'M", " ", "123", "45", " hi", "\n\n", " ", " yo", "\tx"])
        XCTAssertEqual(pieces("12345", .llama3(maxDigits: 1)), ["1", "2", "3", "4", "5"])
        XCTAssertEqual(pieces("a...\n\nb", .llama3(maxDigits: 3)), ["a", "...\n\n", "b"])
        XCTAssertEqual(pieces("café naïve", .gpt2), ["café", " naïve"])
        XCTAssertEqual(pieces("e\u{301}x", .gpt2), ["e", "\u{301}", "x"])
        XCTAssertEqual(pieces("长上 下", .gpt2), ["长上", " 下"])
        XCTAssertEqual(pieces("hi 🙂👍 x", .gpt2), ["hi", " 🙂👍", " x"])
        XCTAssertEqual(pieces("", .gpt2), [])
        XCTAssertEqual(pieces("   ", .gpt2), ["   "])
        XCTAssertEqual(pieces("a+=b 1234567", .defaultBPE), ["a", "+=", "b", " ", "123", "456", "7"])
    }

    /// The scanners against Python's regex module on the Hugging Face patterns (300 texts, many random).
    func testPreTokenizersMatchTheRegexes() throws {
        let j = try JSONSerialization.jsonObject(with: Data(contentsOf: TestPaths.fixtures.appendingPathComponent("pretokenizer-splits.json"))) as! [String: Any]
        let texts = j["texts"] as! [String]
        for (name, kind) in [("gpt2", PreTokenizerKind.gpt2), ("llama3", .llama3(maxDigits: 3)), ("qwen2", .llama3(maxDigits: 1)), ("smollm", .gpt2Digits)] {
            let expected = j[name] as! [[String]]
            XCTAssertEqual(expected.count, texts.count)
            for (i, t) in texts.enumerated() {
                var s = t
                let got = s.withUTF8 { b -> [[Unicode.Scalar]] in
                    var out: [[Unicode.Scalar]] = []
                    guard let base = b.baseAddress else { return out }
                    PreTokenizer(p: base).split(kind, 0, b.count) {
                        out.append(Array(String(decoding: UnsafeBufferPointer(start: base + $0, count: $1 - $0), as: UTF8.self).unicodeScalars))
                    }
                    return out
                }
                // Scalar by scalar: String's == is canonical equivalence.
                XCTAssertEqual(got, expected[i].map { Array($0.unicodeScalars) }, "\(name) \(t.debugDescription)")
            }
        }
    }

    func testHuggingFaceSplitPreTokenizers() throws {
        let url = TestPaths.fixtures.appendingPathComponent("tiny-bytelevel-tokenizer.json")
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tokenizers-split-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let llama3 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
        let cases: [(Any, String)] = [
            (["type": "Sequence", "pretokenizers": [
                ["type": "Split", "pattern": ["Regex": llama3], "behavior": "Isolated", "invert": false],
                ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false]]], "llama3"),
            (["type": "Sequence", "pretokenizers": [
                ["type": "Digits", "individual_digits": true],
                ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true]]], "smollm"),
        ]
        for (pre, name) in cases {
            json["pre_tokenizer"] = pre
            let file = dir.appendingPathComponent("\(name).json")
            try JSONSerialization.data(withJSONObject: json).write(to: file)
            let t = try Tokenizer.huggingFace(tokenizerJSON: file, tokenizerConfig: nil)
            XCTAssertEqual(t.vocabulary.model, .bytePairEncoding(pre: name))
            XCTAssertEqual(try t.decode(t.encode("the cat sat on 12 mats\n")), "the cat sat on 12 mats\n")
        }
        json["pre_tokenizer"] = ["type": "Split", "pattern": ["Regex": "\\w+"], "behavior": "Isolated", "invert": false]
        let file = dir.appendingPathComponent("unknown.json")
        try JSONSerialization.data(withJSONObject: json).write(to: file)
        XCTAssertThrowsError(try Tokenizer.huggingFace(tokenizerJSON: file, tokenizerConfig: nil)) {
            guard case .unknownPreTokenizer? = $0 as? TokenizerError else { return XCTFail("\($0)") }
        }
    }

    /// SentencePiece by scores: tokens <unk> <s> </s>, the 256 byte tokens, then pieces with scores.
    static func tinySentencePiece(addSpacePrefix: Bool) -> TokenizerVocabulary {
        var tokens = ["<unk>", "<s>", "</s>"] + (0..<256).map { "<0x" + hex2(UInt8($0)) + ">" }
        var scores = [Float](repeating: 0, count: tokens.count)
        var types: [Int32] = [2, 3, 3] + [Int32](repeating: 6, count: 256)
        for (t, s) in [("▁", -10), ("a", -5), ("b", -6), ("c", -7), ("ab", -1), ("bc", -0.5), ("▁a", -2), ("▁ab", -3)] as [(String, Float)] {
            tokens.append(t); scores.append(s); types.append(1)                 // 259 ▁, 260 a, 261 b, 262 c, 263 ab, 264 bc, 265 ▁a, 266 ▁ab
        }
        tokens.append("\n\n"); scores.append(-1000); types.append(4)           // 267, user-defined
        return TokenizerVocabulary(model: .sentencePiece, tokens: tokens, scores: scores, tokenTypes: types,
                                   bosID: 1, eosID: 2, unknownID: 0, addBOS: true, addSpacePrefix: addSpacePrefix)
    }

    func testSentencePieceByScores() throws {
        let t = try Tokenizer(Self.tinySentencePiece(addSpacePrefix: false))
        // (b,c) scores -0.5, above (a,b) at -1: the best pair first, wherever it is.
        XCTAssertEqual(t.encode("abc", addSpecial: false), [260, 264])
        XCTAssertEqual(t.encode("abc"), [1, 260, 264])
        XCTAssertEqual(t.encode("", addSpecial: true), [1])
        XCTAssertEqual(t.encode("", addSpecial: false), [])
        // Byte fallback for characters outside the vocabulary: é is C3 A9, 🙂 F0 9F 99 82.
        XCTAssertEqual(t.encode("aé", addSpecial: false), [260, 198, 172] as [Int32])
        XCTAssertEqual(t.encode("🙂", addSpecial: false), [243, 162, 156, 133] as [Int32])   // 3 + F0 9F 99 82
        XCTAssertEqual(try t.decode([260, 198, 172]), "aé")   // 3 + C3, 3 + A9
        // User-defined and control tokens in the text.
        XCTAssertEqual(t.encode("a\n\n</s>b", addSpecial: false), [260, 267, 2, 261])
        XCTAssertEqual(try t.decode([1, 260, 267, 2, 261], skipSpecial: true), "a\n\nb")
        XCTAssertEqual(t.endOfGenerationIDs, [2])

        let p = try Tokenizer(Self.tinySentencePiece(addSpacePrefix: true))
        // "▁a▁ab": (a,b) first (-1), then ▁a at 0 (-2), then ▁ab (-3).
        XCTAssertEqual(p.encode("a ab", addSpecial: false), [265, 266])
        XCTAssertEqual(try p.decode([265, 266]), "a ab")
        var g = SplitMix(state: 11)
        for _ in 0..<200 {
            let s = randomText(&g, length: Int(g.next() % 30), sentencePiece: true)
            XCTAssertEqual(try t.decode(t.encode(s, addSpecial: false)), s)
            XCTAssertEqual(try t.decode(t.encode(s), skipSpecial: true), s)
        }
    }

    func testStreamingDecoderNeverSplitsACharacter() throws {
        let t = try Tokenizer(Self.tinySentencePiece(addSpacePrefix: false))
        let text = "aé🙂b中\u{301}c"
        let bytes = Array(text.utf8)
        var d = StreamingDecoder(t)
        var outputs: [String] = []
        for b in bytes {
            let ids = t.encode(String(decoding: [b], as: UTF8.self), addSpecial: false)
            _ = ids
            let s = try d.push(b < 0x80 ? (t.encode(String(UnicodeScalar(b)), addSpecial: false).first!) : 3 + Int32(b))
            outputs.append(s)
        }
        outputs.append(d.finish())
        XCTAssertEqual(outputs.joined(), text)
        for s in outputs { XCTAssertFalse(s.unicodeScalars.contains("\u{FFFD}")) }
        XCTAssertEqual(outputs.filter { !$0.isEmpty }.map { $0.unicodeScalars.count }, [1, 1, 1, 1, 1, 1, 1])

        // Invalid and truncated sequences: U+FFFD, as a whole decode gives.
        var e = StreamingDecoder(t)
        XCTAssertEqual(try e.push(3 + 0xF0), "")
        XCTAssertEqual(try e.push(3 + 0x9F), "")
        XCTAssertEqual(e.finish(), "\u{FFFD}")
        XCTAssertEqual(try e.push(3 + 0xFF), "\u{FFFD}")
        XCTAssertEqual(try e.push(3 + 0xE2), "")
        XCTAssertEqual(try e.push(260), "\u{FFFD}a")
        XCTAssertThrowsError(try e.push(9999)) { XCTAssertEqual($0 as? TokenizerError, .invalidID(9999)) }
    }

    func testBadVocabulariesAreRefused() {
        func refused(_ v: TokenizerVocabulary, _ expected: TokenizerError, line: UInt = #line) {
            XCTAssertThrowsError(try Tokenizer(v), line: line) { XCTAssertEqual($0 as? TokenizerError, expected, line: line) }
        }
        var v = Self.tinyByteLevel()
        v.merges!.append("abc")
        refused(v, .malformedMerge(index: 6, merge: "abc"))
        v = Self.tinyByteLevel(); v.merges!.append("Ġ zz")
        refused(v, .unknownMergeToken(index: 6, token: "zz"))
        v = Self.tinyByteLevel(); v.merges!.append("Ġ q")
        refused(v, .unknownMergeToken(index: 6, token: "Ġq"))
        refused(Self.tinyByteLevel(pre: "no-such-pre"), .unknownPreTokenizer("no-such-pre"))
        v = Self.tinyByteLevel(); v.merges = nil
        refused(v, .missingMerges)
        v = Self.tinyByteLevel(); v.tokenTypes!.removeLast()
        refused(v, .lengthMismatch(field: "tokenTypes", expected: 263, actual: 262))
        v = Self.tinyByteLevel(); v.bosID = 263
        refused(v, .specialIDOutOfRange(name: "bos", id: 263, vocabularySize: 263))
        v = Self.tinyByteLevel(); v.endOfGenerationIDs = [-4]
        refused(v, .specialIDOutOfRange(name: "end-of-generation", id: -4, vocabularySize: 263))
        refused(TokenizerVocabulary(model: .sentencePiece, tokens: []), .emptyVocabulary)
        refused(TokenizerVocabulary(model: .sentencePiece, tokens: ["a"]), .missingScores)
        refused(TokenizerVocabulary(model: .sentencePiece, tokens: ["a", "b"], scores: [0]), .lengthMismatch(field: "scores", expected: 2, actual: 1))
        XCTAssertFalse(TokenizerError.missingMerges.description.isEmpty)
    }

    func testHuggingFaceSentencePieceFixture() throws {
        let t = try Tokenizer.huggingFace(tokenizerJSON: TestPaths.fixtures.appendingPathComponent("tiny-sentencepiece-tokenizer.json"),
                                          tokenizerConfig: nil)
        XCTAssertEqual(t.vocabulary.model, .sentencePiece)
        XCTAssertTrue(t.vocabulary.addBOS)          // from the post-processor's template
        XCTAssertEqual(t.vocabulary.bosID, 1)
        XCTAssertTrue(t.vocabulary.addSpacePrefix)  // Prepend("▁")
        // Merges ranked b c, ▁ a, a b, ▁a b. "▁abc": bc first, then ▁a.
        XCTAssertEqual(t.encode("abc"), [1, 263, 266])
        // "▁ab": ▁a (rank 1) before ab (rank 2), then ▁a b.
        XCTAssertEqual(t.encode("ab", addSpecial: false), [265])
        // "▁ab▁abc": bc, ▁a (leftmost), ▁a, then ▁a b; the stale a b pairs are skipped.
        XCTAssertEqual(t.encode("ab abc"), [1, 265, 263, 266])
        // Byte fallback: é is C3 A9.
        XCTAssertEqual(t.encode("é", addSpecial: false), [259, 198, 172])
        XCTAssertEqual(try t.decode([1, 265, 263, 266], skipSpecial: true), "ab abc")
        XCTAssertEqual(try t.decode([259, 198, 172]), "é")
        XCTAssertEqual(t.encode("a</s>", addSpecial: false), [263, 2])
        var g = SplitMix(state: 9)
        for _ in 0..<200 {
            let s = randomText(&g, length: Int(g.next() % 30), sentencePiece: true)
            guard !s.hasPrefix(" ") else { continue }   // the decoder strips one leading space (Strip decoder)
            XCTAssertEqual(try t.decode(t.encode(s), skipSpecial: true), s)
        }
    }

    func testHuggingFaceByteLevelFixture() throws {
        let t = try Tokenizer.huggingFace(
            tokenizerJSON: TestPaths.fixtures.appendingPathComponent("tiny-bytelevel-tokenizer.json"),
            tokenizerConfig: TestPaths.fixtures.appendingPathComponent("tiny-bytelevel-tokenizer_config.json"))
        XCTAssertEqual(t.vocabulary.model, .bytePairEncoding(pre: "gpt2"))
        XCTAssertEqual(t.count, 278)
        XCTAssertEqual(t.vocabulary.eosID, 0)
        XCTAssertFalse(t.vocabulary.addBOS)
        // Hand-computed: "the" → t + he (he rank 1 beats th rank 20); " cat" → at, Ġc, Ġcat; " sat" → Ġs, at, Ġsat;
        // " on" → on (rank 6) before Ġo (15), so Ġ + on; " the" → Ġt, Ġthe; " mat" → at, Ġm, Ġmat; "\n\n" → ĊĊ.
        XCTAssertEqual(t.encode("the cat sat on the mat\n\n"), [117, 258, 268, 270, 33, 263, 260, 275, 276])
        XCTAssertEqual(t.encode("the<|endoftext|>"), [117, 258, 0])
        XCTAssertEqual(try t.decode([117, 258, 0, 268]), "the<|endoftext|> cat")
        XCTAssertEqual(try t.decode([117, 258, 0, 268], skipSpecial: true), "the cat")
        XCTAssertEqual(t.endOfGenerationIDs, [0])
        var g = SplitMix(state: 3)
        for _ in 0..<200 {
            let s = randomText(&g, length: Int(g.next() % 40))
            XCTAssertEqual(try t.decode(t.encode(s)), s)
        }
        XCTAssertThrowsError(try Tokenizer.huggingFace(tokenizerJSON: TestPaths.fixtures.appendingPathComponent("absent.json"), tokenizerConfig: nil)) {
            guard case .unreadableFile? = $0 as? TokenizerError else { return XCTFail("\($0)") }
        }
        let bad = FileManager.default.temporaryDirectory.appendingPathComponent("tokenizers-bad-\(getpid()).json")
        try Data("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}".utf8).write(to: bad)
        defer { try? FileManager.default.removeItem(at: bad) }
        XCTAssertThrowsError(try Tokenizer.huggingFace(tokenizerJSON: bad, tokenizerConfig: nil)) {
            guard case .malformedJSON? = $0 as? TokenizerError else { return XCTFail("\($0)") }
        }
        try Data("{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}".utf8).write(to: bad)
        XCTAssertThrowsError(try Tokenizer.huggingFace(tokenizerJSON: bad, tokenizerConfig: nil)) {
            XCTAssertEqual($0 as? TokenizerError, .unsupportedTokenizerJSON(field: "model type", value: "Unigram"))
        }
    }
}
