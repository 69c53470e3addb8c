import AttentionTensor
import ChatTemplate
import Foundation
@testable import LongContextModel
import XCTest

/// ``ModelError``'s typed cases, field by field, for a representative set of bad inputs: the values
/// a caller (the command line, the server, a test) reads without parsing a sentence.
final class ModelErrorTests: XCTestCase {
    static let llamaKeys = #""model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 24,"#
        + #" "num_attention_heads": 2, "num_key_value_heads": 1"#

    func tiny() throws -> CausalLM {
        try CausalLM(config: try ModelConfig(vocabSize: 64, hiddenSize: 16, intermediateSize: 24, layers: 1, heads: 2, kvHeads: 1), seed: 3)
    }

    func error(_ body: () throws -> Any) -> ModelError? {
        do { _ = try body() } catch { return error as? ModelError }
        return nil
    }

    // MARK: config.json

    func testConfigKeyOfTheWrongType() {
        let json = "{" + Self.llamaKeys + #", "num_hidden_layers": "two"}"#
        XCTAssertEqual(error { try ModelConfig(jsonData: Data(json.utf8)) },
                       .invalidConfig(key: "num_hidden_layers", value: "two", expected: "an integer"))
        XCTAssertEqual(error { try ModelConfig(jsonData: Data(json.utf8)) }?.description,
                       "config: num_hidden_layers must be an integer, got two")
    }

    func testConfigKeyOutOfRangeAndMissing() {
        let zero = "{" + Self.llamaKeys + #", "num_hidden_layers": 0}"#
        XCTAssertEqual(error { try ModelConfig(jsonData: Data(zero.utf8)) },
                       .invalidConfig(key: "num_hidden_layers", value: "0", expected: "at least 1"))
        let missing = "{" + Self.llamaKeys + "}"
        XCTAssertEqual(error { try ModelConfig(jsonData: Data(missing.utf8)) }, .missingConfig(key: "num_hidden_layers"))
        let heads = "{" + Self.llamaKeys.replacingOccurrences(of: #""num_key_value_heads": 1"#, with: #""num_key_value_heads": 3"#)
            + #", "num_hidden_layers": 1}"#
        XCTAssertEqual(error { try ModelConfig(jsonData: Data(heads.utf8)) },
                       .invalidConfig(key: "num_attention_heads", value: "2", expected: "a multiple of num_key_value_heads (3)"))
    }

    func testUnsupportedConfigValues() {
        let act = "{" + Self.llamaKeys + #", "num_hidden_layers": 1, "hidden_act": "relu"}"#
        XCTAssertEqual(error { try ModelConfig(jsonData: Data(act.utf8)) },
                       .unsupportedConfig(key: "hidden_act", value: "\"relu\"", supported: "silu"))
        let type = "{" + Self.llamaKeys.replacingOccurrences(of: #""llama""#, with: #""bert""#) + #", "num_hidden_layers": 1}"#
        guard case .unsupportedConfig("model_type", "\"bert\"", let supported)? = error({ try ModelConfig(jsonData: Data(type.utf8)) }) else {
            return XCTFail("model_type")
        }
        XCTAssertTrue(supported.contains("llama") && supported.contains("gemma3_text"), supported)
        XCTAssertEqual(error { try ModelConfig(jsonData: Data("[1]".utf8)) }, .unreadableConfig(file: "config.json"))
    }

    func testHugeSizesAreTooLarge() {
        let json = "{" + Self.llamaKeys.replacingOccurrences(of: #""vocab_size": 64"#, with: #""vocab_size": 2000000"#)
            + #", "num_hidden_layers": 1}"#
        XCTAssertEqual(error { try ModelConfig(jsonData: Data(json.utf8)) },
                       .tooLarge(quantity: "vocab_size", value: 2_000_000, limit: 1 << 20))
    }

    // MARK: tokens

    func testTokenOutsideTheVocabularyNamesItsPosition() throws {
        let model = try tiny()
        let e = error { try model.loss(tokens: [1, 2, 3, 4, 99, 5], batch: 2, length: 3) }
        XCTAssertEqual(e, .tokenOutOfRange(token: 99, sequence: 1, position: 1, vocabulary: 64))
        XCTAssertEqual(e?.description, "tokens: id 99 at [1, 1] is outside the vocabulary 0..<64")
        XCTAssertEqual(error { try model.loss(tokens: [1, -1, 3], batch: 1, length: 3) },
                       .tokenOutOfRange(token: -1, sequence: 0, position: 1, vocabulary: 64))
        XCTAssertEqual(error { try model.loss(tokens: [1, 2, 3], batch: 2, length: 3) }, .batchMismatch(count: 3, batch: 2, length: 3))
        XCTAssertEqual(error { try model.loss(tokens: [1, 2, 3], batch: 1, length: 3, targets: [2, 3, 64]) },
                       .targetOutOfRange(target: 64, position: 2, vocabulary: 64))
    }

    func testTrainerNamesTheStreamOfABadToken() throws {
        var o = TrainingOptions()
        (o.batch, o.length, o.steps) = (1, 4, 1)
        let train: [Int32] = Array(repeating: 1, count: 20), validation: [Int32] = [1, 2, 3, 4, 5, 64, 1]
        XCTAssertEqual(error { try Trainer(model: try self.tiny(), options: o, train: train, validation: validation, directory: nil) },
                       .tokenOutOfRange(token: 64, sequence: 1, position: 5, vocabulary: 64))
        XCTAssertEqual(error { try Trainer(model: try self.tiny(), options: o, train: [1, 2, 3], validation: [], directory: nil) },
                       .tooFewTokens(input: "the training stream", count: 3, minimum: 6))
        o.batch = 0
        XCTAssertEqual(error { try Trainer(model: try self.tiny(), options: o, train: train, validation: [], directory: nil) },
                       .invalidOption(name: "batch", value: "0", expected: "at least 1"))
    }

    // MARK: generation

    func testMaxTokensOverflowIsRefused() throws {
        let model = try tiny()
        func generate(_ max: Int) -> ModelError? {
            error { try model.generate(prompt: [1, 2], maxTokens: max, stopTokens: []) { _ in true } }
        }
        XCTAssertEqual(generate(Int.max), .sequenceTooLong(length: Int.max, limit: 1 << 22))
        XCTAssertEqual(generate((1 << 22) - 1), .sequenceTooLong(length: (1 << 22) + 1, limit: 1 << 22))
        XCTAssertEqual(generate(-1), .invalidOption(name: "max tokens", value: "-1", expected: ">= 0"))
        XCTAssertEqual(error { try model.generate(prompt: [], maxTokens: 1, stopTokens: []) { _ in true } },
                       .tooFewTokens(input: "the prompt", count: 0, minimum: 1))
        XCTAssertEqual(error { try model.generate(prompt: [1], maxTokens: 1, sampling: SamplingOptions(topP: 0), stopTokens: []) { _ in true } },
                       .invalidOption(name: "top-p", value: "0.0", expected: "in (0, 1]"))
    }

    /// Logits that are finite at the prompt and NaN at the next step: the generation stops with the
    /// step and the token id that was not finite.
    final class PoisonedLogits: LogitSource {
        let vocabulary: Int, poisoned: Int
        init(vocabulary: Int, poisoned: Int) { (self.vocabulary, self.poisoned) = (vocabulary, poisoned) }
        func prefill(_ prompt: [Int32], maxTokens: Int) throws -> [Float] { (0..<vocabulary).map { Float($0 == 7 ? 1 : 0) } }
        func next(_ token: Int32) throws -> [Float] { (0..<vocabulary).map { $0 == poisoned ? .nan : 0 } }
    }

    func testNonFiniteLogitsNameTheStep() throws {
        let model = try tiny()
        var emitted = [Int32]()
        let e = error {
            try model.generate(prompt: [1, 2], maxTokens: 4, stopTokens: [], source: PoisonedLogits(vocabulary: 64, poisoned: 5)) {
                emitted.append($0)
                return true
            }
        }
        XCTAssertEqual(e, .nonFiniteLogits(step: 1, token: 5))
        XCTAssertEqual(e?.description, "non-finite value: logit 5 at generation step 1")
        XCTAssertEqual(emitted, [7])
    }

    // MARK: chat templates, files

    func testBadChatTemplateInAFolder() throws {
        let dir = NSTemporaryDirectory() + "model-error-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        try Data(#"{"chat_template": 3}"#.utf8).write(to: URL(fileURLWithPath: dir + "/tokenizer_config.json"))
        XCTAssertEqual(error { try LanguageModel.folderChatTemplate(dir) as Any },
                       .invalidCheckpoint(file: dir + "/tokenizer_config.json",
                                          reason: "chat_template is neither a string nor a list of {name, template}"))
        try Data(#"{"chat_template": "{% if x %}never closed"}"#.utf8).write(to: URL(fileURLWithPath: dir + "/tokenizer_config.json"))
        XCTAssertThrowsError(try LanguageModel.folderChatTemplate(dir)) {
            guard case ChatTemplateError.syntax(let line, let column, _)? = $0 as? ChatTemplateError else { return XCTFail("\($0)") }
            XCTAssertEqual(line, 1)
            XCTAssertGreaterThanOrEqual(column, 1)
        }
        XCTAssertEqual(error { try LanguageModel(path: dir + "/absent") }, .fileNotFound(path: dir + "/absent"))
    }

    func testCorpusLinesAreNamedByNumber() {
        XCTAssertEqual(error { try TextCorpus(kjvText: "Gen1:1 In the beginning\nnoreference\n") },
                       .malformedCorpusLine(line: 2, text: "noreference"))
        XCTAssertEqual(error { try TextCorpus(kjvText: "\n\n") }, .emptyCorpus(path: nil))
    }
}
