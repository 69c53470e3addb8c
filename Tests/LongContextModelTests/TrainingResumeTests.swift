import AttentionTensor
import Foundation
@testable import LongContextModel
import XCTest

/// Resuming a run: the options that decide the batches must be the checkpoint's, and the
/// checkpoint's files must be one save's (the state lists them, and is written last).
final class TrainingResumeTests: XCTestCase {
    func tiny() throws -> CausalLM {
        try CausalLM(config: try ModelConfig(vocabSize: ByteTokenizer.vocabSize, hiddenSize: 16, intermediateSize: 24, layers: 1,
                                             heads: 4, kvHeads: 2), seed: 5)
    }

    let text = ByteTokenizer.encode(String(repeating: "In the beginning was the word, and the word was with God. ", count: 20))

    func options() -> TrainingOptions {
        var o = TrainingOptions()
        (o.batch, o.length, o.steps, o.learningRate, o.warmupSteps, o.checkpointEvery, o.evalEvery) = (2, 16, 6, 1e-2, 2, 3, 0)
        o.seed = 1 << 63 | 12345   // a seed >= 2^63 is kept exactly
        return o
    }

    /// A directory holding the checkpoint of step 3.
    func checkpoint() throws -> String {
        let dir = NSTemporaryDirectory() + "resume-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        XCTAssertFalse(try Trainer(model: tiny(), options: options(), train: text, validation: [], directory: dir).run(until: 3) { _ in })
        return dir
    }

    func resumed(_ dir: String, _ o: TrainingOptions) throws -> Trainer {
        let t = try Trainer(model: try CausalLM(directory: dir), options: o, train: text, validation: [], directory: dir)
        try t.resume()
        return t
    }

    func testOptionsThatChangeTheBatchesMustMatch() throws {
        let dir = try checkpoint()
        XCTAssertEqual(try resumed(dir, options()).step, 3)
        let changes: [(String, (inout TrainingOptions) -> Void)] = [
            ("batch", { $0.batch = 3 }), ("length", { $0.length = 8 }), ("seed", { $0.seed = 1 }),
            ("accumulation", { $0.accumulation = 2 }),
        ]
        for (name, change) in changes {
            var o = options()
            change(&o)
            XCTAssertThrowsError(try resumed(dir, o), name) { error in
                guard case ModelError.resumeMismatch(dir, name, _, _)? = error as? ModelError else { return XCTFail("\(error)") }
                XCTAssertTrue("\(error)".contains("\(name) is"), "\(error)")
            }
        }
    }

    /// A save interrupted after the weights (or the moments) were renamed, before the state: the
    /// old state's manifest names the file that changed, and nothing resumes.
    func testAnInterruptedSaveIsRefused() throws {
        let fm = FileManager.default
        for replaced in ["model.safetensors", "optimizer.safetensors"] {
            let dir = NSTemporaryDirectory() + "resume-\(UUID().uuidString)", old = dir + "-step3"
            addTeardownBlock { try? fm.removeItem(atPath: dir); try? fm.removeItem(atPath: old) }
            let trainer = try Trainer(model: tiny(), options: options(), train: text, validation: [], directory: dir)
            try trainer.run(until: 3) { _ in }
            try fm.copyItem(atPath: dir, toPath: old)
            try trainer.run(until: 4) { _ in }
            // Step 4's `replaced` beside step 3's everything else, as a crash between renames leaves it.
            for name in ["config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"] where name != replaced {
                try fm.removeItem(atPath: dir + "/" + name)
                try fm.copyItem(atPath: old + "/" + name, toPath: dir + "/" + name)
            }
            XCTAssertThrowsError(try resumed(dir, options()), replaced) { error in
                guard case ModelError.invalidCheckpoint(let file, let reason) = error else { return XCTFail("\(error)") }
                XCTAssertEqual(file, dir + "/" + replaced)
                XCTAssertTrue(reason.contains("interrupted"), reason)
            }
            try fm.removeItem(atPath: dir + "/" + replaced)
            try fm.copyItem(atPath: old + "/" + replaced, toPath: dir + "/" + replaced)
            XCTAssertEqual(try resumed(dir, options()).step, 3)
        }
    }

    /// The state is written last and lists every other file; a state without the list (written
    /// before it existed) still resumes.
    func testTheStateIsTheManifest() throws {
        let dir = try checkpoint()
        let path = dir + "/trainer_state.json"
        var o = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        let files = try XCTUnwrap(o["files"] as? [String: Any])
        XCTAssertEqual(Set(files.keys), ["config.json", "model.safetensors", "optimizer.safetensors"])
        XCTAssertEqual((o["seed"] as? NSNumber)?.stringValue, String(options().seed))
        o["files"] = nil
        try JSONSerialization.data(withJSONObject: o).write(to: URL(fileURLWithPath: path))
        XCTAssertEqual(try resumed(dir, options()).step, 3)
    }
}
