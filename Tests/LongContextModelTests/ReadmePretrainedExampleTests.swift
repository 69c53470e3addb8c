import ChatTemplate
import Foundation
import LongContextModel
import XCTest

/// The README's pretrained-model example, compiled and run on SmolLM2 (`make models`; skipped
/// when the file is absent).
final class ReadmePretrainedExampleTests: XCTestCase {
    static var modelsDirectory: String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return ProcessInfo.processInfo.environment["MODELS_DIR"] ?? root.appendingPathComponent("data/models").path
    }

    func testReadmePretrainedExample() async throws {
        let path = Self.modelsDirectory + "/SmolLM2-135M-Instruct.Q4_1.gguf"
        try XCTSkipUnless(FileManager.default.fileExists(atPath: path), "\(path) absent: make models")
        var answer = ""
        // README example begins
        // The model, its tokenizer and its chat template, from one GGUF file (weights mapped, not copied).
        let lm = try LanguageModel(path: path)
        let prompt = try lm.chatPrompt([ChatMessage(role: "user", content: "What is the capital of France?")])

        // Text pieces as they are decoded (whole UTF-8 characters); cancelling the task stops it.
        for try await piece in lm.generate(prompt, options: GenerationOptions(maxTokens: 32)) {
            answer += piece
        }
        // README example ends
        XCTAssertTrue(answer.contains("Paris"), answer)
        XCTAssertEqual(lm.endTokens.contains(lm.encode("<|im_end|>", addSpecial: false)[0]), true)
    }

    /// Dropping the stream stops the generation; a stop string ends it without being emitted.
    func testCancellationAndStopStrings() async throws {
        let path = Self.modelsDirectory + "/SmolLM2-135M-Instruct.Q4_1.gguf"
        try XCTSkipUnless(FileManager.default.fileExists(atPath: path), "\(path) absent: make models")
        let lm = try LanguageModel(path: path)
        let prompt = try lm.chatPrompt([ChatMessage(role: "user", content: "Count from 1 to 50, one number per line.")])
        var pieces = 0
        for try await _ in lm.generate(prompt, options: GenerationOptions(maxTokens: 200)) {
            pieces += 1
            if pieces == 3 { break }
        }
        XCTAssertEqual(pieces, 3)
        // Greedy text with and without a stop string: the stopped one is the prefix before it.
        var full = "", stopped = ""
        let all = try lm.generate(prompt, options: GenerationOptions(maxTokens: 24)) { full += $0; return true }
        guard let cut = full.range(of: "3") else { return XCTFail("no 3 in \(full)") }
        let r = try lm.generate(prompt, options: GenerationOptions(maxTokens: 24, stop: ["3"])) { stopped += $0; return true }
        XCTAssertEqual(stopped, String(full[..<cut.lowerBound]))
        XCTAssertEqual(r.finishReason, "stop")
        XCTAssertEqual(all.finishReason, all.tokens.count == 24 ? "length" : "stop")
        // Gemma 3 270M (a base model) ships no chat template: refused by name.
        let gemma = Self.modelsDirectory + "/gemma-3-270m-q4_k_m.gguf"
        if FileManager.default.fileExists(atPath: gemma) {
            let g = try LanguageModel(path: gemma)
            XCTAssertThrowsError(try g.chatPrompt([ChatMessage(role: "user", content: "hi")])) { error in
                XCTAssertTrue("\(error)".contains("no chat template"), "\(error)")
            }
        }
    }
}
