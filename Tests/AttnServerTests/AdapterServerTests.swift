import AttentionTensor
import Foundation
import LongContextModel
import XCTest

/// `attn-server --adapter DIR`: a PEFT LoRA adapter applied unmerged on the GGUF model. With a
/// random B (as `attn lm lora-init --random-b`) the greedy text differs from the base server's and
/// is the library's text with the same adapter attached; streams decoded together (one batched
/// step of several rows, the adapter's products included) are each the text they get alone; an
/// adapter that does not fit the model is refused at start with its error.
final class AdapterServerTests: XCTestCase {
    static let modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    /// A rank-8 adapter for `model` on every projection, B uniform in ±0.1, saved into `directory`.
    static func writeAdapter(_ model: CausalLM, to directory: String, seed: UInt64) throws -> LoRAAdapter {
        let a = try LoRAAdapter(model: model, rank: 8, alpha: 16, targetModules: modules, seed: seed)
        var rng = SplitMix64(seed: seed &+ 1)
        for e in a.parameters.entries where e.name.hasSuffix("lora_B.weight") {
            for i in 0..<e.count { a.parameters.scalars[e.offset + i] = Float((2 * rng.nextUnitOpen() - 1) * 0.1) }
        }
        try a.save(to: directory)
        return a
    }

    func completionText(_ r: HTTPTestClient.Response) -> String? {
        (r.json["choices"] as? [[String: Any]])?.first?["text"] as? String
    }

    func testAdapterChangesTheTextEqualsTheLibraryAndStaysBatchInvariant() throws {
        let path = ServerTests.modelPath
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("\(path) is absent (make models)") }
        guard ServerProcess.binary != nil else { throw XCTSkip("the attn-server binary is not built") }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("attn-adapter-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The server tests run --matmul exact, as LanguageModel(path:) loads.
        let lm = try LanguageModel(path: path)
        let adapter = try Self.writeAdapter(lm.model, to: dir, seed: 1)
        let adapted = LanguageModel(model: try lm.model.attaching(adapter), codec: lm.codec, chatTemplate: lm.chatTemplate, name: lm.name)

        let started = Date()
        let prompt = "The capital of France is"
        let body: [String: Any] = ["prompt": prompt, "max_tokens": 10, "temperature": 0]
        let baseText: String? = try {
            let base = try ServerProcess(model: path, arguments: ["--ctx", "256"])
            defer { base.stop() }
            return completionText(try base.client.post("/v1/completions", body))
        }()

        let server = try ServerProcess(model: path, arguments: ["--parallel", "4", "--ctx", "256", "--adapter", dir])
        defer { server.stop() }
        let c = server.client
        let r = try c.post("/v1/completions", body)
        XCTAssertEqual(r.status, 200, r.text)
        let text = completionText(r)
        var expected = ""
        _ = try adapted.generate(prompt, options: GenerationOptions(maxTokens: 10)) { expected += $0; return true }
        XCTAssertEqual(text, expected, "the server's text with the adapter is the library's")
        XCTAssertNotNil(baseText)
        XCTAssertNotEqual(text, baseText, "the adapter must change the greedy text")

        // Four streams at once, each the text it gets alone: two of the greedy request above and
        // two of one seeded sampling request, whose text alone is asked first. Four rows in a step:
        // OpenBLAS's sgemm gives each of 2 or 3 rows the bits it gets alone, of 4 and more not.
        let sampled: [String: Any] = ["prompt": "Once upon a time, in a small village,", "max_tokens": 10, "temperature": 0.8, "seed": 7]
        let cases = [body, body, sampled, sampled]
        let sampledText = completionText(try c.post("/v1/completions", sampled))
        let solo = [text, text, sampledText, sampledText]
        let box = UncheckedBox(NSLock())
        nonisolated(unsafe) var streamed = [String?](repeating: nil, count: cases.count)
        let done = cases.indices.map { expectation(description: "stream \($0)") }
        for (i, k) in cases.enumerated() {
            var b = k
            b["stream"] = true
            nonisolated(unsafe) let body = b
            Thread.detachNewThread {
                var pieces = ""
                let status = try? c.stream("/v1/completions", body) { e in
                    if e == "[DONE]" { return true }
                    let o = (try? JSONSerialization.jsonObject(with: Data(e.utf8))) as? [String: Any]
                    pieces += ((o?["choices"] as? [[String: Any]])?.first?["text"] as? String) ?? ""
                    return true
                }
                box.value.lock(); streamed[i] = status == 200 ? pieces : nil; box.value.unlock()
                done[i].fulfill()
            }
        }
        wait(for: done, timeout: scaled(300))
        box.value.lock(); let together = streamed; box.value.unlock()
        for i in cases.indices {
            XCTAssertNotNil(solo[i], "request \(i)")
            XCTAssertEqual(together[i], solo[i], "stream \(i) decoded beside others differs from it alone")
        }
        print("adapter server test: \(Int(Date().timeIntervalSince(started))) s")
        let metrics = try c.metrics()
        // Steps of more than 2 rows (the buckets are 1, 2, 4, ...): the four streams ran together.
        let steps = metrics.value("attn_server_decode_batch_rows_count") ?? 0
        let two = metrics.value("attn_server_decode_batch_rows_bucket{le=\"2.0\"}") ?? 0
        XCTAssertGreaterThan(steps - two, 0, "no step decoded more than two sequences together:\n\(metrics.text)")
    }

    /// An adapter whose tensors do not fit the model (rank 8 in its config, rank 4 stored; or made
    /// for Gemma 3) stops the server at start with the adapter's error.
    func testAnAdapterThatDoesNotFitIsRefused() throws {
        let path = ServerTests.modelPath
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("\(path) is absent (make models)") }
        guard ServerProcess.binary != nil else { throw XCTSkip("the attn-server binary is not built") }
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("attn-adapter-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let smol = try CausalLM(gguf: path)
        let a = try LoRAAdapter(model: smol, rank: 4, alpha: 8, targetModules: ["q_proj"], seed: 1)
        try a.save(to: root + "/rank")
        let config = root + "/rank/adapter_config.json"
        var o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: config))) as? [String: Any])
        o["r"] = 8
        try JSONSerialization.data(withJSONObject: o).write(to: URL(fileURLWithPath: config))
        var dirs = [(root + "/rank", "lora_")]
        let gemma = ServerProcess.modelsDirectory + "/gemma-3-270m-q4_k_m.gguf"
        if FileManager.default.fileExists(atPath: gemma) {
            try LoRAAdapter(model: try CausalLM(gguf: gemma), rank: 4, alpha: 8, targetModules: ["q_proj"], seed: 1).save(to: root + "/gemma")
            dirs.append((root + "/gemma", "q_proj"))
        }
        for (dir, mention) in dirs {
            XCTAssertThrowsError(try ServerProcess(model: path, arguments: ["--ctx", "64", "--adapter", dir])) { e in
                guard case ServerProcess.Failure.didNotStart(let log) = e else { return XCTFail("\(e)") }
                XCTAssertTrue(log.contains("--adapter \(dir) does not apply"), log)
                XCTAssertTrue(log.contains(mention), log)
            }
        }
        XCTAssertThrowsError(try ServerProcess(model: path, arguments: ["--ctx", "64", "--adapter", root + "/none"])) { e in
            guard case ServerProcess.Failure.didNotStart(let log) = e else { return XCTFail("\(e)") }
            XCTAssertTrue(log.contains("adapter_config.json: missing"), log)
        }
    }
}
