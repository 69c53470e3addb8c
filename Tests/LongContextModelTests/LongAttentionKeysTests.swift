import AttentionTensor
import Foundation
@testable import LongContextModel
import XCTest

/// The project's own config keys (`long_attention`): unknown keys and values of the wrong type are
/// refused by name, never dropped for the default; BigBird seeds round-trip over all 64 bits.
final class LongAttentionKeysTests: XCTestCase {
    /// A small Llama config.json with `own` as its `long_attention` object.
    func config(_ own: String) -> Data {
        Data((#"{"model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 24,"#
              + #" "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "long_attention": "#
              + own + "}").utf8)
    }

    func assertRefused(_ own: String, naming words: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try ModelConfig(jsonData: config(own)), own, file: file, line: line) { error in
            switch error as? ModelError {
            case .invalidConfig?, .unsupportedConfig?, .missingConfig?: break
            default: return XCTFail("\(error)", file: file, line: line)
            }
            let s = "\(error)"
            for w in words { XCTAssertTrue(s.contains(w), "\(s) should name \(w)", file: file, line: line) }
        }
    }

    func testUnknownKeysAreRefusedByName() {
        assertRefused(#"{"layers": [{"type": "infini", "segment_size": 512}]}"#, naming: ["layers[0]", "segment_size", "segment, update"])
        assertRefused(#"{"layers": [{"type": "exact", "window": 3}]}"#, naming: ["window"])
        assertRefused(#"{"layers": [{"type": "bigbird", "random_block": 2}]}"#, naming: ["random_block"])
        assertRefused(#"{"layers": [{"type": "linear", "features": "relu"}]}"#, naming: ["features"])
        assertRefused(#"{"layer": [{"type": "exact"}]}"#, naming: ["long_attention.layer =", "not supported"])
        assertRefused(#"{"rope_ntk": {"theta": 10000, "factor": 4, "alpha": 1}}"#, naming: ["rope_ntk", "alpha"])
    }

    func testWronglyTypedValuesAreRefusedByName() {
        assertRefused(#"{"layers": [{"type": "infini", "update": 1}]}"#, naming: ["update", "string"])
        assertRefused(#"{"layers": [{"type": "linear", "feature_map": ["relu"]}]}"#, naming: ["feature_map"])
        assertRefused(#"{"layers": [{"type": "infini", "segment": "512"}]}"#, naming: ["segment", "integer"])
        assertRefused(#"{"layers": [{"type": "bigbird", "seed": true}]}"#, naming: ["seed"])
        assertRefused(#"{"layers": [{"type": "bigbird", "seed": 1.5}]}"#, naming: ["seed"])
        assertRefused(#"{"rope_ntk": 4}"#, naming: ["rope_ntk", "object"])
        assertRefused(#"{"rope_ntk": {"theta": "10000", "factor": 4}}"#, naming: ["rope_ntk", "theta"])
        assertRefused(#"{"position_encoding": true}"#, naming: ["position_encoding", "string"])
        assertRefused(#"{"expert_sizes": 8}"#, naming: ["expert_sizes", "list"])
        assertRefused(#"{"expert_sizes": ["8"]}"#, naming: ["expert_sizes", "integers"])
        assertRefused(#"[1]"#, naming: ["long_attention must be an object"])
    }

    func testKnownKeysStillRead() throws {
        let c = try ModelConfig(jsonData: config(#"{"layers": [{"type": "infini", "segment": 512, "update": "delta"}],"#
                                                 + #" "position_encoding": "rope", "rope_ntk": {"theta": 10000, "factor": 4}}"#))
        XCTAssertEqual(c.attention, [.infini(segment: 512, update: .delta)])
        XCTAssertEqual(c.positions, .rope(theta: 10000, scaling: .ntk(factor: 4)))
    }

    /// Seeds at and above 2^63 are written as unsigned integers and read back bit for bit (they
    /// used to be written as negative Int64 and read back as 0); the old negative form reads as bits.
    func testBigBirdSeedsRoundTripOver64Bits() throws {
        for seed: UInt64 in [0, 1, 1 << 63 - 1, 1 << 63, 0xDEAD_BEEF_CAFE_F00D, .max] {
            let c = try ModelConfig(vocabSize: 64, hiddenSize: 16, intermediateSize: 24, layers: 1, heads: 2, kvHeads: 1,
                                    attention: [.bigbird(blockSize: 4, windowBlocks: 3, randomBlocks: 1, seed: seed)])
            let text = String(decoding: try c.jsonData(), as: UTF8.self)
            XCTAssertTrue(text.contains("\"seed\": \(seed)"), text)
            XCTAssertEqual(try ModelConfig(jsonData: c.jsonData()).attention, c.attention, "seed \(seed)")
        }
        let old = try ModelConfig(jsonData: config(#"{"layers": [{"type": "bigbird", "block_size": 4, "seed": -1}]}"#))
        XCTAssertEqual(old.attention, [.bigbird(blockSize: 4, windowBlocks: 3, randomBlocks: 3, seed: .max)])
    }

    /// The config writer's strings go through the package's one escaper (SafeTensors'), and read back.
    func testConfigStringsAreEscapedOnce() throws {
        let s = "quote \" backslash \\ newline \n tab \t bell \u{07} backspace \u{08} é"
        XCTAssertEqual(jsonText(s), SafeTensors.jsonString(s))
        let back = try JSONSerialization.jsonObject(with: Data(("[" + jsonText(s) + "]").utf8)) as? [String]
        XCTAssertEqual(back, [s])
    }
}
