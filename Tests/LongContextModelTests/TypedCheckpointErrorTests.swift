import AttentionTensor
import Foundation
import LongContextModel
import XCTest

/// A checkpoint's tensor-level problems are typed ``ModelError`` cases naming the tensor and the
/// file (not strings): a NaN, a tensor missing, misshapen, or not part of the model, from a
/// checkpoint directory, a LoRA adapter and a hand-filled parameter set.
final class TypedCheckpointErrorTests: XCTestCase {
    func config(intermediate: Int = 7, layers: Int = 2) throws -> ModelConfig {
        try ModelConfig(vocabSize: 13, hiddenSize: 12, intermediateSize: intermediate, layers: layers, heads: 4, kvHeads: 2, headDim: 4)
    }

    func directory() -> String {
        let dir = NSTemporaryDirectory() + "typed-errors-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    func testCheckpointTensorErrorsNameTheTensorAndTheFile() throws {
        let dir = directory(), file = dir + "/model.safetensors"
        let model = try CausalLM(config: try config(), seed: 1)
        model.parameters.pointer("model.layers.1.mlp.up_proj.weight")[2 * 12 + 5] = -.infinity
        try model.save(to: dir)
        XCTAssertThrowsError(try CausalLM(directory: dir)) {
            XCTAssertEqual($0 as? ModelError, .nonFiniteTensor(name: "model.layers.1.mlp.up_proj.weight", file: file, index: 29))
            XCTAssertEqual("\($0)", "checkpoint: \(file): model.layers.1.mlp.up_proj.weight holds NaN or Inf (element 29)")
        }
        // The same weights under configs that do not fit them.
        let fine = try CausalLM(config: try config(), seed: 1)
        try fine.save(to: dir)
        let json = try String(contentsOfFile: dir + "/config.json", encoding: .utf8)
        func load(_ edited: String) throws -> CausalLM {
            try edited.write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
            return try CausalLM(directory: dir)
        }
        XCTAssertThrowsError(try load(json.replacingOccurrences(of: "\"intermediate_size\": 7", with: "\"intermediate_size\": 8"))) {
            XCTAssertEqual($0 as? ModelError, .misshapenTensor(name: "model.layers.0.mlp.gate_proj.weight", shape: [7, 12], expected: [8, 12], file: file))
        }
        try json.write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        // The weights of a model with one layer more, then one fewer, beside this config.
        for (layers, check) in [(3, { (e: Error) in
                                    guard case .unexpectedTensor(let name, file)? = e as? ModelError else { return XCTFail("\(e)") }
                                    XCTAssertTrue(name.hasPrefix("model.layers.2."), name)
                                }),
                                (1, { (e: Error) in
                                    XCTAssertEqual(e as? ModelError, .missingTensor(name: "model.layers.1.input_layernorm.weight", shape: [12], file: dir))
                                })] {
            let other = directory()
            try CausalLM(config: try config(layers: layers), seed: 1).save(to: other)
            try? FileManager.default.removeItem(atPath: file)
            try FileManager.default.copyItem(atPath: other + "/model.safetensors", toPath: file)
            XCTAssertThrowsError(try CausalLM(directory: dir), "\(layers) layers", check)
        }
    }

    func testParameterSetRefusesByName() throws {
        let p = try ParameterSet(layout: [("a", [2, 3])])
        XCTAssertThrowsError(try p.set("b", try Tensor(zeros: [2, 3]))) {
            XCTAssertEqual($0 as? ModelError, .unexpectedTensor(name: "b", file: nil))
        }
        XCTAssertThrowsError(try p.set("a", try Tensor(zeros: [3, 2]))) {
            XCTAssertEqual($0 as? ModelError, .misshapenTensor(name: "a", shape: [3, 2], expected: [2, 3], file: nil))
        }
    }

    func testAdapterWithANonFiniteTensorIsRefusedByName() throws {
        let dir = directory()
        let model = try CausalLM(config: try config(), seed: 1)
        let adapter = try LoRAAdapter(model: model, rank: 2, alpha: 4, targetModules: ["q_proj"], seed: 3)
        let name = try XCTUnwrap(adapter.parameters.names.first { $0.contains("layers.1") && $0.hasSuffix("lora_A.weight") })
        adapter.parameters.pointer(name)[4] = .nan
        try adapter.save(to: dir)
        XCTAssertThrowsError(try LoRAAdapter(directory: dir, model: model)) {
            XCTAssertEqual($0 as? ModelError, .nonFiniteTensor(name: name, file: dir + "/adapter_model.safetensors", index: 4))
        }
    }
}
