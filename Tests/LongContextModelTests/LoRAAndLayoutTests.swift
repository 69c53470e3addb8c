import AttentionTensor
import Foundation
@testable import LongContextModel
import XCTest

/// LoRA adapters from the wild (PEFT's training dropout, Mixtral targets), and the raw-memory APIs
/// that write through another parameter set's offsets: they check its layout first.
final class LoRAAndLayoutTests: XCTestCase {
    func llama(intermediate: Int = 24) throws -> CausalLM {
        try CausalLM(config: try ModelConfig(vocabSize: ByteTokenizer.vocabSize, hiddenSize: 16, intermediateSize: intermediate,
                                             layers: 2, heads: 4, kvHeads: 2), seed: 5)
    }

    func temporaryDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "lora-layout-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    /// Rewrites one key of `dir/adapter_config.json`.
    func setAdapterKey(_ dir: String, _ key: String, _ value: Any) throws {
        let path = dir + "/adapter_config.json"
        var o = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        o[key] = value
        try JSONSerialization.data(withJSONObject: o).write(to: URL(fileURLWithPath: path))
    }

    /// PEFT trains with `lora_dropout: 0.05` by default; dropout does not act at inference, so the
    /// adapter loads and merges exactly as with 0. A rate outside [0, 1) is still refused by name.
    func testAdapterWithDropoutLoads() throws {
        let model = try llama(), dir = try temporaryDirectory()
        let adapter = try LoRAAdapter(model: model, rank: 2, alpha: 4, targetModules: ["q_proj", "v_proj"], seed: 3)
        for i in 0..<adapter.parameters.count { adapter.parameters.scalars[i] = Float(i % 7) * 0.01 }
        try adapter.save(to: dir)
        try setAdapterKey(dir, "lora_dropout", 0.05)
        let loaded = try LoRAAdapter(directory: dir, model: model)
        XCTAssertEqual(loaded.parameters.names, adapter.parameters.names)
        XCTAssertTrue((0..<adapter.parameters.count).allSatisfy { loaded.parameters.scalars[$0] == adapter.parameters.scalars[$0] })
        for bad: Any in [1.5, -0.1, "0.05", true] {
            try setAdapterKey(dir, "lora_dropout", bad)
            XCTAssertThrowsError(try LoRAAdapter(directory: dir, model: model), "\(bad)") { error in
                XCTAssertTrue("\(error)".contains("lora_dropout"), "\(error)")
            }
        }
    }

    /// A Mixtral's MLPs are experts: gate/up/down_proj name nothing there, and are refused by name
    /// even when another target (q_proj) does match.
    func testMixtralMLPTargetsAreRefusedByName() throws {
        let config = try ModelConfig(architecture: .mixtral, vocabSize: 64, hiddenSize: 16, intermediateSize: 24, layers: 1,
                                     heads: 4, kvHeads: 2, experts: 2, expertsPerToken: 1)
        let model = try CausalLM(config: config, seed: 1)
        for module in ["gate_proj", "up_proj", "down_proj"] {
            XCTAssertThrowsError(try LoRAAdapter(model: model, rank: 2, alpha: 4, targetModules: ["q_proj", module], seed: 0)) { error in
                guard case ModelError.invalidOption("LoRA target module", module, let expected) = error else { return XCTFail("\(error)") }
                XCTAssertTrue(expected.contains("mixtral"), expected)
            }
        }
        XCTAssertNoThrow(try LoRAAdapter(model: model, rank: 2, alpha: 4, targetModules: ["q_proj", "o_proj"], seed: 0))
        // A tied model has no lm_head to adapt.
        let tied = try CausalLM(config: try ModelConfig(vocabSize: 64, hiddenSize: 16, intermediateSize: 24, layers: 1, heads: 4,
                                                        kvHeads: 2, tieWordEmbeddings: true), seed: 1)
        XCTAssertThrowsError(try LoRAAdapter(model: tied, rank: 2, alpha: 4, targetModules: ["q_proj", "lm_head"], seed: 0)) { error in
            XCTAssertTrue("\(error)".contains("lm_head"), "\(error)")
        }
    }

    /// Gradients of another config under the same names (a larger MLP) would be written out of
    /// bounds: the loss refuses them, naming the first tensor that differs.
    func testLossRefusesGradientsOfAnotherLayout() throws {
        let model = try llama(), other = try llama(intermediate: 32)
        let tokens = ByteTokenizer.encode("In the beginning")
        let g = try ParameterSet(zerosLike: other.parameters)
        XCTAssertEqual(g.names, model.parameters.names)
        XCTAssertThrowsError(try model.loss(tokens: tokens, batch: 1, length: tokens.count, gradients: g)) { error in
            guard case ModelError.layoutMismatch(let what, let found, let expected) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(what.contains("the gradients"), what)
            XCTAssertTrue(found.contains("model.layers.0.mlp.gate_proj.weight") && expected.contains("[24, 16]"), "\(error)")
        }
        XCTAssertTrue((0..<g.count).allSatisfy { g.scalars[$0] == 0 })
        XCTAssertNoThrow(try model.loss(tokens: tokens, batch: 1, length: tokens.count,
                                        gradients: try ParameterSet(zerosLike: model.parameters)))
    }

    /// AdamW's update with parameters or gradients not laid out as its moments: refused, no step taken.
    func testAdamWRefusesAnotherLayout() throws {
        let model = try llama(), other = try llama(intermediate: 32)
        let opt = try AdamW(parameters: model.parameters)
        let before = Array(UnsafeBufferPointer(start: model.parameters.scalars, count: model.parameters.count))
        XCTAssertThrowsError(try opt.update(model.parameters, gradients: try ParameterSet(zerosLike: other.parameters), lr: 1e-3)) {
            XCTAssertTrue("\($0)".contains("AdamW gradients"), "\($0)")
        }
        XCTAssertThrowsError(try opt.update(other.parameters, gradients: try ParameterSet(zerosLike: other.parameters), lr: 1e-3)) {
            XCTAssertTrue("\($0)".contains("AdamW parameters"), "\($0)")
        }
        XCTAssertEqual(opt.step, 0)
        XCTAssertTrue(before.elementsEqual(UnsafeBufferPointer(start: model.parameters.scalars, count: model.parameters.count)))
        // Fewer entries: the count is named.
        let short = try ParameterSet(layout: Array(model.parameters.entries.dropLast()).map { ($0.name, $0.shape) })
        XCTAssertThrowsError(try opt.update(model.parameters, gradients: short, lr: 1e-3)) {
            XCTAssertTrue("\($0)".contains("entries"), "\($0)")
        }
    }

    /// A LoRA merge into or from parameters of another model (same names, other shapes) is refused.
    func testLoRAMergeRefusesAnotherLayout() throws {
        let model = try llama(), other = try llama(intermediate: 32)
        let adapter = try LoRAAdapter(model: model, rank: 2, alpha: 4, targetModules: ["q_proj", "down_proj"], seed: 3)
        let merged = try ParameterSet(copying: model.parameters)
        XCTAssertNoThrow(try adapter.merge(base: model.parameters, into: merged))
        XCTAssertThrowsError(try adapter.merge(base: other.parameters, into: merged)) {
            XCTAssertTrue("\($0)".contains("base parameters"), "\($0)")
        }
        XCTAssertThrowsError(try adapter.merge(base: model.parameters, into: try ParameterSet(copying: other.parameters))) {
            XCTAssertTrue("\($0)".contains("merged parameters"), "\($0)")
        }
    }
}
