import ChatTemplate
import Foundation
import LongContextModel
import XCTest

/// Drives the `attn-server` binary over loopback HTTP with SmolLM2 (skipped when the model or the
/// binary is absent: `swift build` builds it, `make models` fetches the model).
final class ServerTests: XCTestCase {
    nonisolated(unsafe) static var server: ServerProcess?
    nonisolated(unsafe) static var startError: Error?
    static let modelName = "SmolLM2-135M-Instruct.Q4_1"
    static var modelPath: String { ServerProcess.modelsDirectory + "/\(modelName).gguf" }

    override class func setUp() {
        super.setUp()
        guard FileManager.default.fileExists(atPath: modelPath), ServerProcess.binary != nil else { return }
        do {
            server = try ServerProcess(model: modelPath, arguments: ["--parallel", "2", "--queue", "8", "--ctx", "512", "--prefix-cache", "8",
                                                                     "--max-body-bytes", String(8 << 20)])
        } catch {
            startError = error
        }
    }

    override class func tearDown() {
        server?.stop()
        server = nil
        super.tearDown()
    }

    var client: HTTPTestClient {
        get throws {
            guard FileManager.default.fileExists(atPath: Self.modelPath) else { throw XCTSkip("\(Self.modelPath) is absent (make models)") }
            guard ServerProcess.binary != nil else { throw XCTSkip("the attn-server binary is not built") }
            if let e = Self.startError { throw e }
            return Self.server!.client
        }
    }

    /// The value of the unlabelled metric `name`.
    func metric(_ name: String) throws -> Double? {
        try client.metrics().value(name + " ")
    }

    func testModelsAndHealth() throws {
        let c = try client
        let models = try c.request("GET", "/v1/models")
        XCTAssertEqual(models.status, 200)
        let data = models.json["data"] as? [[String: Any]]
        XCTAssertEqual(data?.first?["id"] as? String, Self.modelName)
        XCTAssertEqual(try c.request("GET", "/health").status, 200)
        let metrics = try c.request("GET", "/metrics")
        XCTAssertEqual(metrics.status, 200)
        XCTAssertTrue(metrics.text.contains("attn_server_active_sequences"))
    }

    /// A greedy completion is `LanguageModel.generate`'s text at temperature 0, and `usage` counts its tokens.
    func testGreedyCompletionEqualsLibrary() throws {
        let c = try client
        let prompt = "The capital of France is"
        let r = try c.post("/v1/completions", ["model": Self.modelName, "prompt": prompt, "max_tokens": 24, "temperature": 0])
        XCTAssertEqual(r.status, 200, r.text)
        let choice = (r.json["choices"] as? [[String: Any]])?.first
        let text = choice?["text"] as? String
        let lm = try LanguageModel(path: Self.modelPath)
        var expected = ""
        let g = try lm.generate(prompt, options: GenerationOptions(maxTokens: 24)) { expected += $0; return true }
        XCTAssertEqual(text, expected)
        XCTAssertEqual(choice?["finish_reason"] as? String, g.finishReason)
        let usage = r.json["usage"] as? [String: Any]
        XCTAssertEqual(usage?["prompt_tokens"] as? Int, g.promptTokens)
        XCTAssertEqual(usage?["completion_tokens"] as? Int, g.tokens.count)
        XCTAssertEqual(r.json["object"] as? String, "text_completion")

        // A stop string ends the text before it.
        let words = expected.split(separator: " ")
        if words.count > 3 {
            let stop = String(words[2])
            let s = try c.post("/v1/completions", ["prompt": prompt, "max_tokens": 24, "stop": [stop]])
            let t = ((s.json["choices"] as? [[String: Any]])?.first?["text"] as? String) ?? "?"
            XCTAssertFalse(t.contains(stop))
            XCTAssertTrue(expected.hasPrefix(t))
            XCTAssertEqual((s.json["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String, "stop")
        }
    }

    /// Concurrent requests decode in one batched step (the batch-rows histogram sees steps of two
    /// rows), and each one's text is still exactly the library's for it alone: greedy and seeded sampling.
    func testConcurrentRequestsAreBatchedAndEachEqualsLibrary() throws {
        let c = try client
        let cases: [(prompt: String, temperature: Double, seed: Int)] = [("The capital of France is", 0, 0),
                                                                         ("Once upon a time, in a small village,", 0.8, 7)]
        let box = UncheckedBox(NSLock())
        nonisolated(unsafe) var texts = [String?](repeating: nil, count: cases.count)
        let done = cases.indices.map { expectation(description: "request \($0)") }
        for (i, k) in cases.enumerated() {
            Thread.detachNewThread {
                let r = try? c.post("/v1/completions", ["model": Self.modelName, "prompt": k.prompt, "max_tokens": 20,
                                                        "temperature": k.temperature, "seed": k.seed])
                let t = (r?.json["choices"] as? [[String: Any]])?.first?["text"] as? String
                box.value.lock(); texts[i] = t; box.value.unlock()
                done[i].fulfill()
            }
        }
        wait(for: done, timeout: scaled(300))
        let lm = try LanguageModel(path: Self.modelPath)
        for (i, k) in cases.enumerated() {
            var expected = ""
            var options = GenerationOptions(maxTokens: 20)
            options.sampling = SamplingOptions(temperature: k.temperature, seed: UInt64(k.seed))
            _ = try lm.generate(k.prompt, options: options) { expected += $0; return true }
            box.value.lock(); let got = texts[i]; box.value.unlock()
            XCTAssertEqual(got, expected, "request \(i)")
        }
        let metrics = try c.metrics()
        let steps = metrics.value("attn_server_decode_batch_rows_count") ?? 0
        let single = metrics.value("attn_server_decode_batch_rows_bucket{le=\"1.0\"}") ?? 0
        XCTAssertGreaterThan(steps - single, 0, "no step decoded two sequences together:\n\(metrics.text)")
    }

    /// A prompt that extends an earlier request's prompt and completion (a chat's next turn) takes
    /// that prefix from the kept cache instead of prefilling it, and still gets the library's text.
    func testPrefixCacheServesAGrowingConversation() throws {
        let c = try client
        func completion(_ prompt: String) throws -> String {
            let r = try c.post("/v1/completions", ["model": Self.modelName, "prompt": prompt, "max_tokens": 8, "temperature": 0])
            XCTAssertEqual(r.status, 200, r.text)
            return ((r.json["choices"] as? [[String: Any]])?.first?["text"] as? String) ?? ""
        }
        let first = "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness"
        let reply = try completion(first)
        let before = try metric("attn_server_prefix_cache_tokens_total") ?? 0
        let second = first + reply + " And God said,"
        let text = try completion(second)
        let reused = (try metric("attn_server_prefix_cache_tokens_total") ?? 0) - before
        let lm = try LanguageModel(path: Self.modelPath)
        XCTAssertGreaterThanOrEqual(reused, 16, "the second prompt's prefix was prefilled again")
        XCTAssertLessThan(reused, Double(lm.encode(second).count))
        var expected = ""
        _ = try lm.generate(second, options: GenerationOptions(maxTokens: 8)) { expected += $0; return true }
        XCTAssertEqual(text, expected)
        XCTAssertGreaterThan(try metric("attn_server_prefix_cache_bytes") ?? 0, 0)
    }

    /// The streamed chat's deltas concatenate to the non-streamed message; the stream ends with [DONE].
    func testChatStreamingMatchesNonStreaming() throws {
        let c = try client
        let body: [String: Any] = ["model": Self.modelName, "max_tokens": 32, "temperature": 0,
                                   "messages": [["role": "user", "content": "What is the capital of France?"]]]
        let r = try c.post("/v1/chat/completions", body)
        XCTAssertEqual(r.status, 200, r.text)
        XCTAssertEqual(r.json["object"] as? String, "chat.completion")
        let message = ((r.json["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])
        let content = message?["content"] as? String
        XCTAssertEqual(message?["role"] as? String, "assistant")
        XCTAssertFalse(content?.isEmpty ?? true)

        var streamed = body
        streamed["stream"] = true
        var deltas = "", events = [String](), finish: String?
        let status = try c.stream("/v1/chat/completions", streamed) { e in
            events.append(e)
            if e == "[DONE]" { return true }
            let o = (try? JSONSerialization.jsonObject(with: Data(e.utf8))) as? [String: Any]
            XCTAssertEqual(o?["object"] as? String, "chat.completion.chunk")
            let choice = (o?["choices"] as? [[String: Any]])?.first
            if let d = (choice?["delta"] as? [String: Any])?["content"] as? String { deltas += d }
            if let f = choice?["finish_reason"] as? String { finish = f }
            return true
        }
        XCTAssertEqual(status, 200)
        XCTAssertEqual(events.last, "[DONE]")
        XCTAssertEqual(deltas, content)
        XCTAssertNotNil(finish)
    }

    func testBadRequestsAndTheServerKeepsServing() throws {
        let c = try client
        func check(_ r: HTTPTestClient.Response, _ status: Int, code: String? = nil, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertEqual(r.status, status, r.text, file: file, line: line)
            let error = r.json["error"] as? [String: Any]
            XCTAssertNotNil(error?["message"] as? String, r.text, file: file, line: line)
            XCTAssertNotNil(error?["type"] as? String, r.text, file: file, line: line)
            if let code { XCTAssertEqual(error?["code"] as? String, code, file: file, line: line) }
        }
        check(try c.request("POST", "/v1/completions", body: Array("{\"prompt\": \"hi\", ".utf8)), 400)
        check(try c.request("POST", "/v1/completions", body: Array("[1, 2]".utf8)), 400)
        check(try c.post("/v1/completions", ["prompt": 42]), 400)
        check(try c.post("/v1/completions", ["prompt": "hi", "max_tokens": "ten"]), 400)
        check(try c.post("/v1/completions", ["prompt": "hi", "temperature": true]), 400)
        check(try c.post("/v1/completions", ["prompt": "hi", "stream": "yes"]), 400)
        check(try c.post("/v1/chat/completions", ["messages": "hello"]), 400)
        check(try c.post("/v1/completions", ["prompt": "hi", "model": "gpt-4"]), 404, code: "model_not_found")
        check(try c.post("/v1/completions", ["prompt": "hi", "temperature": -1]), 400)
        check(try c.post("/v1/completions", ["prompt": "hi", "max_tokens": 100_000]), 400, code: "context_length_exceeded")
        check(try c.post("/v1/completions", ["prompt": "hi", "max_tokens": -1]), 400)
        // Invalid UTF-8 in the prompt's bytes.
        check(try c.request("POST", "/v1/completions", body: Array("{\"prompt\": \"".utf8) + [0xFF, 0xFE, 0xC3] + Array("\"}".utf8)), 400)
        // 20 MB over an 8 MiB limit.
        let big = Array("{\"prompt\": \"".utf8) + [UInt8](repeating: UInt8(ascii: "a"), count: 20_000_000) + Array("\"}".utf8)
        check(try c.request("POST", "/v1/completions", body: big), 413, code: "request_too_large")
        check(try c.request("GET", "/v1/nothing"), 404)
        check(try c.request("GET", "/v1/models/other"), 404, code: "model_not_found")
        // Still serving.
        let ok = try c.post("/v1/completions", ["prompt": "Hello", "max_tokens": 2])
        XCTAssertEqual(ok.status, 200, ok.text)
        XCTAssertTrue(Self.server!.isRunning)
    }

    /// A client that drops its stream frees the sequence (the gauge returns to 0).
    func testDisconnectFreesTheSequence() throws {
        let c = try client
        var got = 0
        _ = try c.stream("/v1/completions", ["prompt": "Once upon a time", "max_tokens": 400, "stream": true]) { _ in
            got += 1
            return got < 3
        }
        XCTAssertEqual(got, 3)
        let deadline = Date().addingTimeInterval(scaled(30))
        var active = try metric("attn_server_active_sequences")
        while active != 0, Date() < deadline {
            Thread.sleep(forTimeInterval: 0.1)
            active = try metric("attn_server_active_sequences")
        }
        XCTAssertEqual(active, 0)
        // Far fewer than 400 tokens were generated for it.
        XCTAssertLessThan(try metric("attn_server_completion_tokens_total") ?? 0, 400)
    }

    /// 1,000 connections open at once, then dropped (a third mid-request, a third mid-header) do
    /// not bring the server down, and it answers again afterwards.
    func testManyDroppedConnections() throws {
        let c = try client
        // This process holds all 1,000 at once: raise its soft descriptor limit where the hard one allows.
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < 2048 {
            limit.rlim_cur = min(limit.rlim_max, 2048)
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        var open = [Int32]()
        defer { for fd in open { close(fd) } }
        for i in 0..<1000 {
            let fd = try c.connect(timeout: 5)
            open.append(fd)
            if i % 3 == 1 { _ = HTTPTestClient.sendAll(fd, Array("POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"pro".utf8)) }
            if i % 3 == 2 { _ = HTTPTestClient.sendAll(fd, Array("GET /health HTTP/1.1\r\n".utf8)) }
        }
        XCTAssertEqual(open.count, 1000)
        for fd in open { close(fd) }
        open.removeAll()
        XCTAssertEqual(try c.request("GET", "/health").status, 200)
        XCTAssertEqual(try c.post("/v1/completions", ["prompt": "Hello", "max_tokens": 2]).status, 200)
        XCTAssertTrue(Self.server!.isRunning)
    }

    /// With one sequence and no queue, a second concurrent request gets 429 with Retry-After.
    func testBusyServerAnswers429() throws {
        guard FileManager.default.fileExists(atPath: Self.modelPath), ServerProcess.binary != nil else {
            throw XCTSkip("model or binary absent")
        }
        let s = try ServerProcess(model: Self.modelPath, arguments: ["--parallel", "1", "--queue", "0", "--ctx", "512"])
        defer { s.stop() }
        let c = s.client
        let first = expectation(description: "first finishes")
        let box = UncheckedBox(NSLock())
        nonisolated(unsafe) var firstStatus = 0
        Thread.detachNewThread {
            let r = try? c.post("/v1/completions", ["prompt": "Once upon a time", "max_tokens": 48])
            box.value.lock(); firstStatus = r?.status ?? -1; box.value.unlock()
            first.fulfill()
        }
        // Wait until the first holds the sequence.
        let deadline = Date().addingTimeInterval(scaled(30))
        while Date() < deadline {
            let m = try c.request("GET", "/health").json
            if (m["active"] as? Int ?? 0) + (m["queued"] as? Int ?? 0) > 0 { break }
            Thread.sleep(forTimeInterval: 0.02)
        }
        let second = try c.post("/v1/completions", ["prompt": "Once upon a time", "max_tokens": 48])
        XCTAssertEqual(second.status, 429, second.text)
        XCTAssertNotNil(second.headers["retry-after"])
        wait(for: [first], timeout: scaled(120))
        box.value.lock(); XCTAssertEqual(firstStatus, 200); box.value.unlock()
        // Free again: accepted.
        XCTAssertEqual(try c.post("/v1/completions", ["prompt": "Hi", "max_tokens": 2]).status, 200)
    }

    /// Gemma 3 270M has no chat template: /v1/chat/completions answers 400.
    func testNoTemplateChatIs400() throws {
        let path = ServerProcess.modelsDirectory + "/gemma-3-270m-q4_k_m.gguf"
        guard FileManager.default.fileExists(atPath: path), ServerProcess.binary != nil else { throw XCTSkip("Gemma absent") }
        let s = try ServerProcess(model: path, arguments: ["--ctx", "256"])
        defer { s.stop() }
        let r = try s.client.post("/v1/chat/completions", ["messages": [["role": "user", "content": "hi"]]])
        XCTAssertEqual(r.status, 400, r.text)
        XCTAssertEqual(r.errorCode, "no_chat_template")
        XCTAssertEqual(try s.client.post("/v1/completions", ["prompt": "Hello", "max_tokens": 3]).status, 200)
    }
}
