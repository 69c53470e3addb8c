import AttentionTensor
import Foundation
import LongAttention
import LongContextModel
import XCTest

/// The README's language-model example, compiled and run (in a temporary directory).
final class ReadmeModelExampleTests: XCTestCase {
    func testReadmeModelExample() throws {
        let dir = NSTemporaryDirectory() + "readme-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // README example begins
        // A small Llama: bytes as tokens, GQA (8 query heads over 2 KV heads), RoPE.
        let config = try ModelConfig(vocabSize: ByteTokenizer.vocabSize, hiddenSize: 64, intermediateSize: 176, layers: 2,
                                     heads: 8, kvHeads: 2)
        let model = try CausalLM(config: config, seed: 1)
        let tokens = ByteTokenizer.encode("In the beginning God created the heaven and the earth.")

        // Loss and gradients (every parameter, under transformers' names), one AdamW step.
        let gradients = try ParameterSet(zerosLike: model.parameters)
        let result = try model.loss(tokens: tokens, batch: 1, length: tokens.count, gradients: gradients)
        let optimizer = try AdamW(parameters: model.parameters)
        try optimizer.update(model.parameters, gradients: gradients, lr: 1e-3)

        // A checkpoint transformers loads (config.json + model.safetensors), and back.
        try model.save(to: dir + "/model")
        let reloaded = try CausalLM(directory: dir + "/model")

        // Generation: prefill, then token by token through an int8 KV cache.
        let continuation = try reloaded.generate(prompt: ByteTokenizer.encode("And God said"), maxTokens: 20,
                                                 sampling: SamplingOptions(temperature: 0.8, topK: 40, seed: 7),
                                                 cacheType: .int8)
        print(ByteTokenizer.decode(continuation))

        // A LoRA adapter in PEFT's format on the attention projections.
        let adapter = try LoRAAdapter(model: reloaded, rank: 8, alpha: 16, targetModules: ["q_proj", "v_proj"], seed: 2)
        try adapter.save(to: dir + "/adapter")
        // README example ends
        XCTAssertEqual(result.positions, tokens.count - 1)
        XCTAssertTrue(result.loss.isFinite && result.loss > 0)
        XCTAssertLessThanOrEqual(continuation.count, 20)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/adapter/adapter_model.safetensors"))
    }
}
