import ArgumentParser
import AttentionTensor
import AttnCommands
import Foundation
import LongContextModel
import XCTest

/// `attn lm profile` and `attn lm passkey` on a real pretrained GGUF model (SmolLM2 in data/models,
/// skipped when absent), with context extension and StreamingLLM options; bad options refused.
final class PretrainedRecipeTests: XCTestCase {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    var smol: String { root.appendingPathComponent("data/models/SmolLM2-135M-Instruct.Q4_1.gguf").path }
    var corpus: String { root.appendingPathComponent("data/kjv.txt").path }
    var directory: URL!

    override func setUpWithError() throws {
        guard FileManager.default.fileExists(atPath: smol), FileManager.default.fileExists(atPath: corpus) else {
            throw XCTSkip("data/models/SmolLM2-135M-Instruct.Q4_1.gguf or data/kjv.txt is absent (make models corpus)")
        }
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("recipe-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { if let directory { try? FileManager.default.removeItem(at: directory) } }

    func run(_ argv: [String]) throws {
        var command = try Attn.parseAsRoot(argv)
        try command.run()
    }

    func json(_ name: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: directory.appendingPathComponent(name))) as! [String: Any]
    }

    /// Profile: nats per token on real tokens of Hebrews; perplexity = exp(mean loss) (1e-12), the
    /// buckets average to the mean (1e-9: equal-width buckets of 7 positions), a plausible
    /// perplexity; sinks + window bound the KV cache and change the losses past the window.
    func testProfileOnSmolLM2() throws {
        let common = ["lm", "profile", "--model", smol, "--books", "Heb", "--corpus", corpus, "--window", "50", "--max-windows", "2",
                      "--batch", "1", "--buckets", "7"]
        try run(common + ["--json", directory.appendingPathComponent("plain.json").path])
        try run(common + ["--sinks", "4", "--attention-window", "20", "--json", directory.appendingPathComponent("streaming.json").path])
        let plain = try json("plain.json"), streaming = try json("streaming.json")
        let mean = plain["meanLoss"] as! Double, ppl = plain["perplexity"] as! Double
        XCTAssertEqual(ppl, exp(mean), accuracy: 1e-12 * ppl)
        XCTAssertGreaterThan(ppl, 2)
        XCTAssertLessThan(ppl, 200)
        XCTAssertEqual(plain["windows"] as? Int, 2)
        let buckets = plain["buckets"] as! [[String: Any]]
        XCTAssertEqual(buckets.count, 7)
        XCTAssertEqual(buckets.map { $0["meanLoss"] as! Double }.reduce(0, +) / 7, mean, accuracy: 1e-9)
        XCTAssertEqual(streaming["sinks"] as? Int, 4)
        XCTAssertEqual(streaming["attentionWindow"] as? Int, 20)
        XCTAssertEqual(plain["kvCacheBytes"] as? Int, 30 * 3 * 50 * 64 * 2 * 4, "30 layers × 3 KV heads × 50 positions × d 64, keys and values")
        XCTAssertEqual(streaming["kvCacheBytes"] as? Int, 30 * 3 * 24 * 64 * 2 * 4, "bounded by sinks + window = 24 positions")
        // The first 20 positions see the same keys under both; later ones lose context.
        let a = (plain["buckets"] as! [[String: Any]])[0]["meanLoss"] as! Double
        let b = (streaming["buckets"] as! [[String: Any]])[0]["meanLoss"] as! Double
        XCTAssertEqual(a, b, accuracy: 1e-4, "positions 0–6 are inside the window")
        XCTAssertNotEqual(mean, streaming["meanLoss"] as! Double)
    }

    /// Passkey: the prompt is the longest of at most the length in real tokens, the answer's first
    /// number decides, with f32 and int8 caches and YaRN options accepted; `--prompts-out` writes
    /// each prompt's ids (the key's digits inside).
    func testPasskeyOnSmolLM2() throws {
        let prompts = directory.appendingPathComponent("prompts")
        try run(["lm", "passkey", "--model", smol, "--lengths", "120", "--depths", "0.5", "--trials", "1", "--kv-type", "int8",
                 "--rope-scaling", "yarn", "--rope-factor", "2", "--json", directory.appendingPathComponent("pk8.json").path,
                 "--prompts-out", prompts.path])
        let t0 = (try json("pk8.json")["trials"] as! [[String: Any]])[0]
        let file = prompts.appendingPathComponent("passkey-120-0.5-\(t0["key"] as! Int).npy").path
        let (shape, ids) = try Numpy.readIntegers(file)
        XCTAssertEqual(shape, [t0["promptTokens"] as! Int])
        let lm = try LanguageModel(path: smol)
        XCTAssertTrue(try lm.decode(ids.map { Int32($0) }).contains("The pass key is \(t0["key"] as! Int)."), "the needle in the written prompt")
        for name in ["pk8.json"] {
            let r = try json(name)
            let trials = r["trials"] as! [[String: Any]]
            XCTAssertEqual(trials.count, 1)
            let t = trials[0], n = t["promptTokens"] as! Int
            XCTAssertLessThanOrEqual(n, 120)
            XCTAssertGreaterThan(n, 120 - 25, "within one filler repetition of the length")
            XCTAssertEqual(t["correct"] as! Bool, TokenizedPasskey.firstNumber(t["answer"] as! String) == t["key"] as? Int)
            XCTAssertEqual(((r["results"] as! [String: Any])["accuracy"] as! [[Double]])[0][0], (t["correct"] as! Bool) ? 1 : 0)
        }
        XCTAssertEqual(try json("pk8.json")["kvType"] as? String, "int8")
        XCTAssertEqual(try json("pk8.json")["contextExtension"] as? String, "yarn ×2.0")
    }

    /// `lm eval --last K`: the last K positions' logits through the KV cache (prefill, then one token
    /// at a time) equal the full forward's last K rows under `--matmul exact` (float32 rounding of a
    /// different summation order: 2e-4 of the largest logit), the loss is the mean over their K − 1
    /// next tokens, and bad K is refused.
    func testEvalLastPositions() throws {
        let lm = try LanguageModel(path: smol)
        let ids = lm.encode("In the beginning God created the heaven and the earth. And the earth was without form, and void.")
        let T = ids.count, K = 5, tokens = directory.appendingPathComponent("t.npy").path
        XCTAssertGreaterThan(T, K + 10)
        try Numpy.write(int32: ids, shape: [T], to: tokens)
        let d = directory.path
        try run(["lm", "eval", "--model", smol, "--tokens", tokens, "--logits", d + "/full.npy"])
        try run(["lm", "eval", "--model", smol, "--tokens", tokens, "--last", "\(K)", "--logits", d + "/last.npy", "--loss", d + "/loss.npy"])
        let full = try Numpy.readTensor(d + "/full.npy"), last = try Numpy.readTensor(d + "/last.npy")
        let V = lm.model.config.vocabSize
        XCTAssertEqual(last.shape, [1, K, V])
        let f = full.scalars, l = last.scalars
        let tail = Array(f[((T - K) * V)...])
        let scale = tail.map(abs).max()!
        XCTAssertLessThanOrEqual(zip(tail, l).map { abs($0 - $1) }.max()!, 2e-4 * scale)
        var total = 0.0
        for j in 0..<(K - 1) {
            let row = Array(l[(j * V)..<((j + 1) * V)]).map(Double.init), m = row.max()!
            total += log(row.map { exp($0 - m) }.reduce(0, +)) + m - row[Int(ids[T - K + j + 1])]
        }
        XCTAssertEqual(Double(try Numpy.readTensor(d + "/loss.npy").scalars[0]), total / Double(K - 1), accuracy: 1e-4)
        for (k, words) in [("0", "at least 1"), ("\(T + 1)", "exceeds the \(T) tokens")] {
            XCTAssertThrowsError(try run(["lm", "eval", "--model", smol, "--tokens", tokens, "--last", k, "--logits", d + "/x.npy"])) { e in
                XCTAssertTrue("\(e)".contains(words), "--last \(k): \(e)")
            }
        }
        XCTAssertThrowsError(try run(["lm", "eval", "--model", smol, "--tokens", tokens, "--last", "1", "--loss", d + "/x.npy"])) { e in
            XCTAssertTrue("\(e)".contains("K >= 2"), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: d + "/x.npy"))
    }

    /// Bad options: one clear error each, before any scoring.
    func testBadOptionsAreRefused() throws {
        let base = ["lm", "profile", "--model", smol, "--books", "Heb", "--corpus", corpus, "--window", "64", "--max-windows", "1"]
        for (extra, words) in [(["--rope-scaling", "linear", "--rope-factor", "0"], "> 0"),
                               (["--rope-scaling", "linear", "--rope-factor=-1"], "> 0"),
                               (["--rope-scaling", "stretch", "--rope-factor", "2"], "--rope-scaling must be one of none, linear"),
                               (["--rope-scaling", "yarn"], "needs --rope-factor"),
                               (["--sinks", "4", "--attention-window", "8189"], "the model's trained context of 8192 positions, got 4 + 8189"),
                               (["--sinks", "4"], "--sinks must be given with --attention-window")] {
            XCTAssertThrowsError(try run(base + extra), "\(extra)") { e in
                XCTAssertTrue("\(e)".contains(words), "\(extra): \(e)")
            }
        }
        XCTAssertThrowsError(try run(["lm", "passkey", "--model", smol, "--lengths", "200", "--tune-steps", "5"])) { e in
            XCTAssertTrue("\(e)".contains("without a fine-tune"), "\(e)")
        }
    }

    /// `pretrained-sparse` end to end on SmolLM2 with passkey cells: the same prompt builder as
    /// `attn lm passkey` (keys in Landmark's 1...50000; a key outside it once made every cell
    /// throw), one cell per (length, depth), correct ≤ trials; a length too short for the
    /// instruction, key and question is a typed error, not a crash.
    func testSparseCommandScoresPasskeyCells() throws {
        let out = directory.appendingPathComponent("sparse.json").path
        try run(["lm", "pretrained-sparse", "--model", smol, "--books", "Heb", "--corpus", corpus, "--attention", "exact", "--ctx", "64",
                 "--passkey-lengths", "120,160", "--passkey-depths", "0,1", "--trials", "2", "--json", out])
        let cells = try json("sparse.json")["passkey"] as! [[String: Any]]
        XCTAssertEqual(cells.map { $0["length"] as! Int }, [120, 120, 160, 160])
        XCTAssertEqual(cells.map { $0["depth"] as! Double }, [0, 1, 0, 1])
        for c in cells {
            XCTAssertEqual(c["trials"] as! Int, 2)
            XCTAssertLessThanOrEqual(c["correct"] as! Int, 2)
        }
        XCTAssertThrowsError(try run(["lm", "pretrained-sparse", "--model", smol, "--books", "Heb", "--corpus", corpus, "--ctx", "64",
                                      "--passkey-lengths", "20", "--passkey-depths", "0.5", "--trials", "1"])) { e in
            XCTAssertTrue("\(e)".contains("tokens"), "\(e)")
        }
    }

    /// The prompt builder on its own: at most the length, within one filler repetition of it, the
    /// needle at the requested depth.
    func testPromptLengthsAndDepths() throws {
        let render: (String) -> [Int32] = { Array($0.utf8).map { Int32($0) } }
        for L in [1000, 3000, 6000] {
            for depth in [0.0, 0.5, 1.0] {
                let ids = try TokenizedPasskey.prompt(length: L, depth: depth, key: 4242, render: render)
                XCTAssertLessThanOrEqual(ids.count, L)
                XCTAssertGreaterThan(ids.count, L - TokenizedPasskey.filler.utf8.count - 1)
                let text = String(decoding: ids.map { UInt8($0) }, as: UTF8.self)
                // Landmark's layout: instruction, filler, key, filler, question on five lines.
                let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
                XCTAssertEqual(lines.count, 5)
                XCTAssertEqual(String(lines[0]), TokenizedPasskey.instruction)
                XCTAssertEqual(String(lines[2]), TokenizedPasskey.needle(4242))
                XCTAssertEqual(String(lines[4]), TokenizedPasskey.question)
                // The needle's place within the filler (between the instruction and the question).
                let at = text.distance(from: text.startIndex, to: text.range(of: "The pass key is 4242")!.lowerBound)
                let start = TokenizedPasskey.instruction.count
                let end = text.count - TokenizedPasskey.question.count - TokenizedPasskey.needle(4242).count
                let fraction = Double(at - start) / Double(max(1, end - start))
                XCTAssertEqual(fraction, depth, accuracy: 0.12, "L \(L) depth \(depth)")
            }
        }
        XCTAssertThrowsError(try TokenizedPasskey.prompt(length: 50, depth: 0.5, key: 1, render: render))
    }
}
