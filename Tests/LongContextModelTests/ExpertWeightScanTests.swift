import AttentionTensor
import Foundation
import LongContextModel
import XCTest

/// A Mixtral's router and expert weights are checked for NaN and infinity when the model is made
/// (the MoE kernels check their input rows, not their weights): from parameters built by hand, and
/// from a checkpoint on disk, the error names the tensor.
final class ExpertWeightScanTests: XCTestCase {
    func mixtral() throws -> ModelConfig {
        try ModelConfig(architecture: .mixtral, vocabSize: 13, hiddenSize: 12, intermediateSize: 7, layers: 2, heads: 4, kvHeads: 2,
                        headDim: 4, experts: 3, expertsPerToken: 2, expertSizes: [5, 7, 9])
    }

    func testNonFiniteExpertWeightIsRefusedByName() throws {
        let config = try mixtral()
        let good = try CausalLM(config: config, seed: 1)
        for (name, index, value) in [("model.layers.1.block_sparse_moe.experts.2.w2.weight", 5, Float.infinity),
                                     ("model.layers.0.block_sparse_moe.experts.0.w1.weight", 59, .nan),
                                     ("model.layers.1.block_sparse_moe.gate.weight", 0, -.infinity)] {
            let p = try ParameterSet(layout: good.parameters.entries.map { ($0.name, $0.shape) })
            p.scalars.update(from: good.parameters.scalars, count: good.parameters.count)
            p.pointer(name)[index] = value
            XCTAssertThrowsError(try CausalLM(config: config, parameters: p)) {
                XCTAssertEqual($0 as? ModelError, .nonFiniteTensor(name: name, file: nil, index: index))
                XCTAssertEqual("\($0)", "checkpoint: \(name) holds NaN or Inf (element \(index))")
            }
        }
    }

    func testCheckpointWithANonFiniteExpertWeightIsRefused() throws {
        let config = try mixtral()
        let model = try CausalLM(config: config, seed: 2)
        let name = "model.layers.0.block_sparse_moe.experts.1.w3.weight"
        model.parameters.pointer(name)[3] = .nan
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("expert-scan-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try model.save(to: dir)
        XCTAssertThrowsError(try CausalLM(directory: dir)) {
            XCTAssertEqual($0 as? ModelError, .nonFiniteTensor(name: name, file: dir + "/model.safetensors", index: 3))
        }
    }
}
