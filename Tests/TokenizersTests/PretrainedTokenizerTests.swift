// The tokenizers of the two real models (GGUF files from `make models`) against Hugging Face's ids in
// ../shared/reference-pretrained/tok_*, and edge cases on them. Skips when the files are absent.

import Foundation
import XCTest
@testable import Tokenizers

final class PretrainedTokenizerTests: XCTestCase {
    func testReferenceCases() throws {
        guard let shared = TestPaths.shared else { throw XCTSkip("no shared directory ($SHARED, ../shared)") }
        let dir = shared.appendingPathComponent("reference-pretrained")
        let cases = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix("tok_") }.sorted()
        guard !cases.isEmpty else { throw XCTSkip("no tok_* cases in \(dir.path)") }
        var checked = 0
        for name in cases {
            let c = dir.appendingPathComponent(name)
            let spec = try JSONSerialization.jsonObject(with: Data(contentsOf: c.appendingPathComponent("case.json"))) as! [String: Any]
            guard let model = ModelFile(rawValue: spec["model"] as! String) else { XCTFail("\(name): unknown model"); continue }
            let t: Tokenizer
            do { t = try modelTokenizer(model) } catch is XCTSkip { continue }
            let raw = try Data(contentsOf: c.appendingPathComponent(spec["text_file"] as! String))
            let text = String(decoding: raw, as: UTF8.self)
            let expected = try readNpyInts(c.appendingPathComponent("expected_ids.npy")).map { Int32($0) }
            let got = t.encode(text, addSpecial: true)
            XCTAssertEqual(got, expected, "\(name)")
            XCTAssertEqual(try t.decode(t.encode(text, addSpecial: false)), text, "\(name) round trip")
            checked += 1
        }
        if checked == 0 { throw XCTSkip("model files absent") }
        print("reference tokenizer cases checked: \(checked) of \(cases.count)")
    }

    func testSmolLM2EdgeCases() throws {
        let t = try modelTokenizer(.smollm2)
        XCTAssertEqual(t.count, 49152)
        XCTAssertEqual(t.encode(""), [])
        XCTAssertFalse(t.vocabulary.addBOS)
        // Chat tokens are single ids and end generations.
        XCTAssertEqual(t.encode("<|im_start|>user\n<|im_end|>"), [1, 4093, 198, 2])
        XCTAssertEqual(Set(t.endOfGenerationIDs), [0, 2])
        XCTAssertTrue(t.isEndOfGeneration(2))
        XCTAssertFalse(t.isEndOfGeneration(1))
        XCTAssertEqual(t.tokenText(1), "<|im_start|>")
        // Digits one by one (smollm pre-tokenizer), whitespace runs, tabs, newlines.
        XCTAssertEqual(t.encode("2026"), [34, 32, 34, 38])
        for s in ["   ", "\n", "\t\t", " \n \n", "a\r\nb", "x  ", "  x", "\u{3000}y\u{A0}z"] {
            XCTAssertEqual(try t.decode(t.encode(s)), s, s.debugDescription)
        }
        XCTAssertThrowsError(try t.decode([49152])) { XCTAssertEqual($0 as? TokenizerError, .invalidID(49152)) }
        try checkRoundTripsAndStreaming(t, seed: 1)
    }

    func testGemma3EdgeCases() throws {
        let t = try modelTokenizer(.gemma3)
        XCTAssertEqual(t.count, 262144)
        XCTAssertEqual(t.encode(""), [2])
        XCTAssertEqual(t.encode("", addSpecial: false), [])
        XCTAssertEqual(t.encode("<start_of_turn>user\nhi<end_of_turn>"), [2, 105, 2364, 107, 2202, 106])
        XCTAssertEqual(Set(t.endOfGenerationIDs), [1, 106])
        XCTAssertEqual(t.tokenText(2), "<bos>")
        // Runs of spaces are user-defined tokens spelled with spaces.
        XCTAssertEqual(t.encode("  ", addSpecial: false), [138])
        // Byte fallback: a private-use character absent from the vocabulary.
        let pua = "\u{F0000}"
        XCTAssertNil(t.tokenID(pua))
        let ids = t.encode(pua, addSpecial: false)
        XCTAssertEqual(ids.map { t.tokenText($0)! }, ["<0xF3>", "<0xB0>", "<0x80>", "<0x80>"])
        XCTAssertEqual(try t.decode(ids), pua)
        XCTAssertEqual(try t.decode([2, 9259], skipSpecial: true), try t.decode([9259]))
        XCTAssertThrowsError(try t.decode([262144])) { XCTAssertEqual($0 as? TokenizerError, .invalidID(262144)) }
        try checkRoundTripsAndStreaming(t, seed: 2)
    }

    /// Words cut at ▁ and cached in long texts give the ids of the plain algorithm over whole fragments.
    func testFastPathsAgreeWithThePlainAlgorithm() throws {
        for m in [ModelFile.smollm2, .gemma3] {
            let t = try modelTokenizer(m)
            var pairs: [(String, String)]? = nil
            if let merges = t.vocabulary.merges {
                pairs = merges.map { let p = $0.split(separator: " ", maxSplits: 1); return (String(p[0]), String(p[1])) }
            }
            let plain = try Tokenizer(vocabulary: t.vocabulary, mergePairs: pairs, options: .init(fastPaths: false))
            var g = SplitMix(state: 5)
            var text = "In the beginning God created the heaven and the earth. x> </y <a> </a>  </b>\n"
            while text.utf8.count < 20000 {
                text += randomText(&g, length: 40, sentencePiece: m == .gemma3) + " the word and the words, again and again. "
            }
            let fast = t.encode(text)
            XCTAssertEqual(fast, plain.encode(text), m.rawValue)
            if m == .gemma3 { XCTAssertTrue(fast.contains(107068), "the token >▁</ spans a ▁") }
        }
    }

    func checkRoundTripsAndStreaming(_ t: Tokenizer, seed: UInt64) throws {
        var g = SplitMix(state: seed)
        var texts = ["", " ", "café naïve résumé", "e\u{301}\u{308}", "长上下文窗口的挑战", "🙂👍🏽👩‍👩‍👧 🚀", "Hello,\tworld!\n\n  ok",
                     "don't DON'T you'll", "x = [1, 22, 333]; // Ġ ▂", "\u{FEFF}\u{200B}\u{0}\u{1}"]
        let sentencePiece = t.vocabulary.model == .sentencePiece
        for _ in 0..<150 { texts.append(randomText(&g, length: Int(g.next() % 60), sentencePiece: sentencePiece)) }
        // SmolLM2's vocabulary has no token for a few bytes (0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xF1, 0xF2):
        // characters made of them are left out (as llama.cpp does); the others round-trip.
        if case .bytePairEncoding = t.vocabulary.model {
            let missing = (0..<256).filter { t.byteIDs[$0] < 0 }.map { UInt8($0) }
            if let b = missing.first(where: { $0 < 0x80 }) {
                XCTAssertEqual(try t.decode(t.encode("a" + String(UnicodeScalar(b)) + "b")), "ab")
            }
            texts = texts.filter { !$0.utf8.contains(where: missing.contains) }
        }
        for s in texts {
            let ids = t.encode(s, addSpecial: false)
            XCTAssertEqual(try t.decode(ids), s, s.debugDescription)
            XCTAssertEqual(try t.decode(t.encode(s), skipSpecial: true), s, s.debugDescription)
            var d = StreamingDecoder(t)
            var out = ""
            for id in ids {
                let piece = try d.push(id)
                XCTAssertFalse(piece.unicodeScalars.contains("\u{FFFD}") && !s.unicodeScalars.contains("\u{FFFD}"), s.debugDescription)
                out += piece
            }
            out += d.finish()
            XCTAssertEqual(out, s, s.debugDescription)
        }
        // Every split of multi-byte characters: feed the text byte by byte (byte tokens); each output is whole characters.
        let s = "aé中🙂👍🏽\u{301}z"
        let byteIDs: [Int32] = Array(s.utf8).map { b in
            t.byteIDs[Int(b)]
        }
        XCTAssertFalse(byteIDs.contains(-1))
        var d = StreamingDecoder(t)
        var pieces: [String] = []
        for id in byteIDs { pieces.append(try d.push(id)) }
        pieces.append(d.finish())
        XCTAssertEqual(pieces.joined(), s)
        XCTAssertEqual(pieces.filter { !$0.isEmpty }, s.unicodeScalars.map { String($0) })
    }
}
