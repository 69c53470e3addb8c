import Foundation
import LongContextModel
import XCTest

/// `attn-server --sinks S --attention-window W`: StreamingLLM's eviction as a server setting. Each
/// sequence's cache holds the sinks and the window whatever `--ctx` is, and a completion that runs
/// past S + W positions is the library's text under the same configuration.
final class StreamingServerTests: XCTestCase {
    static let sinks = 4, window = 60

    func testSinksAndWindowBoundTheCacheAndMatchTheLibrary() throws {
        let path = ServerTests.modelPath
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("\(path) is absent (make models)") }
        guard ServerProcess.binary != nil else { throw XCTSkip("the attn-server binary is not built") }
        let server = try ServerProcess(model: path, arguments: ["--ctx", "4096", "--sinks", String(Self.sinks),
                                                                "--attention-window", String(Self.window)])
        defer { server.stop() }
        let c = server.client

        // The budget is one cache of S + W positions (plus the prefill ring), not of 4096.
        let budget = try XCTUnwrap(try c.metrics().value("attn_server_kv_cache_budget_bytes "))
        let lm = try LanguageModel(path: path)
        let cfg = lm.model.config
        let fullCache = Double(cfg.layers * 2 * cfg.kvHeads * cfg.headDim * 4096 * 4)
        XCTAssertLessThan(budget, fullCache / 4, "a streaming sequence's cache should not hold all 4096 positions")

        // Past S + W = 64 positions the sinks and the window are what attention sees.
        let prompt = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
        let r = try c.post("/v1/completions", ["prompt": prompt, "max_tokens": 60, "temperature": 0])
        XCTAssertEqual(r.status, 200, r.text)
        let text = (r.json["choices"] as? [[String: Any]])?.first?["text"] as? String
        let ext = try ContextExtension(sinks: Self.sinks, window: Self.window)
        let streaming = LanguageModel(model: try lm.model.with(config: try ext.apply(to: cfg)), codec: lm.codec,
                                      chatTemplate: lm.chatTemplate, name: lm.name)
        var expected = ""
        let g = try streaming.generate(prompt, options: GenerationOptions(maxTokens: 60)) { expected += $0; return true }
        XCTAssertGreaterThan(g.promptTokens + g.tokens.count, Self.sinks + Self.window, "the completion must run past the window")
        XCTAssertEqual(text, expected)

        // Bad values are refused at start.
        XCTAssertThrowsError(try ServerProcess(model: path, arguments: ["--sinks", "4"]))
    }
}
