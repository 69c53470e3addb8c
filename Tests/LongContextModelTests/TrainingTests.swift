import AttentionTensor
import Foundation
@testable import LongContextModel
import XCTest

/// AdamW, the schedule, the trainer (loss goes down, resuming is exact), LoRA's gradients, the
/// corpus and the config formats.
final class TrainingTests: XCTestCase {
    func tiny(_ attention: LayerAttention = .exact) throws -> CausalLM {
        try CausalLM(config: try ModelConfig(vocabSize: ByteTokenizer.vocabSize, hiddenSize: 16, intermediateSize: 24, layers: 2,
                                             heads: 4, kvHeads: 2, attention: [attention, attention]), seed: 5)
    }

    /// One AdamW step by hand: θ = 1, g = 0.5, lr = 0.1, λ = 0.1 (a matrix): m̂ = g, v̂ = g², so
    /// θ' = θ(1 − lrλ) − lr·g/(|g| + ε).
    func testAdamWStepByHand() throws {
        let p = try ParameterSet(layout: [("w", [1, 2]), ("norm", [2])])
        for i in 0..<4 { p.scalars[i] = 1 }
        let g = try ParameterSet(zerosLike: p)
        for i in 0..<4 { g.scalars[i] = 0.5 }
        let opt = try AdamW(parameters: p, beta1: 0.9, beta2: 0.95, epsilon: 1e-8, weightDecay: 0.1)
        try opt.update(p, gradients: g, lr: 0.1)
        let adamStep: Double = 0.1 * 0.5 / (0.5 + 1e-8)
        XCTAssertEqual(Double(p.scalars[0]), 0.99 - adamStep, accuracy: 1e-6)
        XCTAssertEqual(Double(p.scalars[2]), 1 - adamStep, accuracy: 1e-6)   // no decay on a vector
        // Second step, g = −0.5: m = 0.9·0.05 − 0.05 = −0.005, v = 0.95·0.0125 + 0.0125, corrected.
        for i in 0..<4 { g.scalars[i] = -0.5 }
        let before = p.scalars[2]
        try opt.update(p, gradients: g, lr: 0.1)
        let m: Double = (0.9 * 0.05 + 0.1 * -0.5) / (1 - 0.81)
        let v: Double = (0.95 * 0.0125 + 0.05 * 0.25) / (1 - 0.9025)
        XCTAssertEqual(Double(p.scalars[2]), Double(before) - 0.1 * m / (v.squareRoot() + 1e-8), accuracy: 1e-6)
    }

    /// Infini's gates take `gateLearningRateMultiplier` times the step; other vectors do not.
    func testAdamWGateMultiplier() throws {
        let p = try ParameterSet(layout: [("model.layers.0.self_attn.infini_beta", [2]), ("model.layers.0.input_layernorm.weight", [2])])
        let g = try ParameterSet(zerosLike: p)
        for i in 0..<4 { g.scalars[i] = 0.25 }
        let opt = try AdamW(parameters: p, weightDecay: 0.1)
        opt.gateLearningRateMultiplier = 50
        try opt.update(p, gradients: g, lr: 1e-3)
        XCTAssertEqual(Double(p.scalars[0]), -50e-3, accuracy: 1e-6)
        XCTAssertEqual(Double(p.scalars[2]), -1e-3, accuracy: 1e-8)
        var o = TrainingOptions()
        o.gateLearningRateMultiplier = 0
        XCTAssertThrowsError(try o.validate())
    }

    func testScheduleWarmupAndCosine() throws {
        let s = try LearningRateSchedule(peak: 1, warmupSteps: 10, totalSteps: 110, minFraction: 0.1)
        XCTAssertEqual(s.rate(at: 0), 0.1, accuracy: 1e-12)
        XCTAssertEqual(s.rate(at: 9), 1, accuracy: 1e-12)
        XCTAssertEqual(s.rate(at: 60), 0.55, accuracy: 1e-12)   // half way down the cosine
        XCTAssertEqual(s.rate(at: 110), 0.1, accuracy: 1e-12)
        XCTAssertThrowsError(try LearningRateSchedule(peak: 0, warmupSteps: 1, totalSteps: 1))
    }

    func text(_ n: Int) -> [Int32] {
        ByteTokenizer.encode(String(repeating: "In the beginning was the word, and the word was with God. ", count: n))
    }

    func options() -> TrainingOptions {
        var o = TrainingOptions()
        (o.batch, o.length, o.steps, o.learningRate, o.warmupSteps) = (4, 32, 30, 1e-2, 5)
        (o.checkpointEvery, o.evalEvery, o.evalWindows) = (10, 10, 4)
        return o
    }

    func testTrainingLowersTheLoss() throws {
        let m = try tiny()
        let trainer = try Trainer(model: m, options: options(), train: text(40), validation: text(4), directory: nil)
        let before = try trainer.validationLoss()
        var losses = [Double]()
        XCTAssertTrue(try trainer.run { losses.append($0.loss) })
        XCTAssertEqual(losses.count, 30)
        XCTAssertLessThan(try trainer.validationLoss(), before * 0.6, "30 steps on a repeated sentence")
        XCTAssertEqual(trainer.validationLosses.map(\.step), [10, 20, 30])
    }

    /// 30 steps in one go equal 10 steps, a checkpoint, a new process-like resume and 20 more:
    /// bitwise, since batches depend on (seed, step) only and the optimizer state is saved.
    func testResumeIsExact() throws {
        let dir = NSTemporaryDirectory() + "train-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let straight = try tiny()
        try Trainer(model: straight, options: options(), train: text(40), validation: [], directory: nil).run { _ in }
        let first = try tiny()
        XCTAssertFalse(try Trainer(model: first, options: options(), train: text(40), validation: [], directory: dir).run(until: 10) { _ in })
        let resumed = try CausalLM(directory: dir)
        let trainer = try Trainer(model: resumed, options: options(), train: text(40), validation: [], directory: dir)
        try trainer.resume()
        XCTAssertEqual(trainer.step, 10)
        try trainer.run { _ in }
        let differing = (0..<straight.parameters.count).filter { resumed.parameters.scalars[$0] != straight.parameters.scalars[$0] }
        XCTAssertEqual(differing.count, 0, "\(differing.count) of \(straight.parameters.count) parameters differ")
    }

    /// LoRA's A and B gradients (from the merged weights' gradient) against finite differences of
    /// the merged model's loss; B = 0 at the start gives the base's loss exactly.
    func testLoRAGradients() throws {
        let base = try tiny()
        let lora = try LoRAAdapter(model: base, rank: 2, alpha: 4, targetModules: ["q_proj", "v_proj", "down_proj", "lm_head"], seed: 1)
        XCTAssertEqual(lora.adaptedWeights.count, 7)
        let tokens = ByteTokenizer.encode("Let there be light: and there was")
        let T = tokens.count
        XCTAssertEqual(try lora.mergedModel(base).loss(tokens: tokens, batch: 1, length: T).loss,
                       try base.loss(tokens: tokens, batch: 1, length: T).loss)
        var rng = SplitMix64(seed: 2)
        for i in 0..<lora.parameters.count { lora.parameters.scalars[i] = Float(0.2 * rng.nextNormal()) }
        let merged = try lora.mergedModel(base)
        let g = try ParameterSet(zerosLike: merged.parameters), ga = try ParameterSet(zerosLike: lora.parameters)
        _ = try merged.loss(tokens: tokens, batch: 1, length: T, gradients: g)
        lora.gradients(fromMerged: g, into: ga)
        for e in lora.parameters.entries {
            let i = Int(rng.next() % UInt64(e.count)), p = lora.parameters.scalars + e.offset + i, saved = p.pointee
            p.pointee = saved + 1e-2
            let up = try lora.mergedModel(base).loss(tokens: tokens, batch: 1, length: T).loss
            p.pointee = saved - 1e-2
            let down = try lora.mergedModel(base).loss(tokens: tokens, batch: 1, length: T).loss
            p.pointee = saved
            let fd = (up - down) / 2e-2
            XCTAssertEqual(Double(ga.scalars[e.offset + i]), fd, accuracy: 2e-2 * max(0.05, abs(fd)), e.name)
        }
        // PEFT's file layout round-trips.
        let dir = NSTemporaryDirectory() + "lora-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try lora.save(to: dir)
        let back = try LoRAAdapter(directory: dir, model: base)
        XCTAssertEqual(back.parameters.names, lora.parameters.names)
        XCTAssertEqual(back.scale, lora.scale)
        XCTAssertTrue(back.parameters.names.allSatisfy {
            $0.hasPrefix("base_model.model.model.layers.") || $0.hasPrefix("base_model.model.lm_head.lora_")
        })
    }

    func testCorpusSplitsByBook() throws {
        let sample = "Ge1:1 In the beginning.\nGe1:2 And the earth.\nRuth1:1 Now it came to pass.\n1Sm1:1 Now there was.\nJob1:1 There was a man.\n"
        let c = try TextCorpus(kjvText: sample)
        XCTAssertEqual(c.documents.map(\.name), ["Ge", "Ruth", "1Sm", "Job"])
        XCTAssertEqual(c.documents[0].text, "In the beginning.\nAnd the earth.\n")
        XCTAssertEqual(c.training.map(\.name), ["Ge", "1Sm"])
        XCTAssertEqual(c.validation.map(\.name), ["Ruth"])
        XCTAssertEqual(c.longDocuments.map(\.name), ["Job"])
        let t = TextCorpus.tokens([c.documents[1]])
        XCTAssertEqual(t.first, ByteTokenizer.bos)
        XCTAssertEqual(t.last, ByteTokenizer.eos)
        XCTAssertEqual(ByteTokenizer.decode(t), "Now it came to pass.\n")
        XCTAssertThrowsError(try TextCorpus(kjvText: "no reference here\n"))
        // The real corpus, when `make corpus` has run (CI runs it): 66 books, whole books held out.
        let path = "data/kjv.txt"
        if FileManager.default.fileExists(atPath: path) {
            let kjv = try TextCorpus(path: path)
            XCTAssertEqual(kjv.documents.count, 66)
            XCTAssertEqual(kjv.validation.count, TextCorpus.validationBooks.count)
            XCTAssertEqual(kjv.longDocuments.count, TextCorpus.longDocumentBooks.count)
        } else if ProcessInfo.processInfo.environment["CI"] == "true" {
            XCTFail("CI without the corpus: make corpus")
        }
    }

    func testConfigFormats() throws {
        // transformers 4.x: top-level rope_theta and rope_scaling {"type": "linear"}.
        let old = """
        {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 6, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "rope_theta": 500000.0,
         "rope_scaling": {"type": "linear", "factor": 2.0}, "tie_word_embeddings": true, "eos_token_id": [2, 3]}
        """
        let c = try ModelConfig(jsonData: old.data(using: .utf8)!)
        XCTAssertEqual(c.positions, .rope(theta: 500000, scaling: .linear(factor: 2)))
        XCTAssertEqual(c.headDim, 4)
        XCTAssertEqual(c.eosTokenId, 2)
        XCTAssertTrue(c.tieWordEmbeddings)
        // Round trips: NTK (written as default RoPE with the scaled base), ALiBi, variants, Mixtral sizes.
        for config in [try ModelConfig(vocabSize: 10, hiddenSize: 8, intermediateSize: 6, layers: 2, heads: 2, kvHeads: 2,
                                       positions: .rope(theta: 10000, scaling: .ntk(factor: 4)),
                                       attention: [.linear(featureMap: .relu), .infini(segment: 64, update: .delta)]),
                       try ModelConfig(vocabSize: 10, hiddenSize: 8, intermediateSize: 6, layers: 1, heads: 2, kvHeads: 1,
                                       positions: .alibi, attention: [.bigbird(blockSize: 16, windowBlocks: 3, randomBlocks: 1, seed: 4)]),
                       try ModelConfig(architecture: .mixtral, vocabSize: 10, hiddenSize: 8, intermediateSize: 6, layers: 1, heads: 2,
                                       kvHeads: 1, experts: 3, expertsPerToken: 2, expertSizes: [4, 6, 12])] {
            XCTAssertEqual(try ModelConfig(jsonData: try config.jsonData()), config)
        }
        let ntk = try JSONSerialization.jsonObject(with: try ModelConfig(vocabSize: 10, hiddenSize: 8, intermediateSize: 6, layers: 1, heads: 2,
            kvHeads: 2, positions: .rope(theta: 10000, scaling: .ntk(factor: 4))).jsonData()) as! [String: Any]
        let theta = ((ntk["rope_parameters"] as! [String: Any])["rope_theta"] as! NSNumber).doubleValue
        XCTAssertEqual(theta, 10000 * Foundation.pow(4, 4.0 / 2.0), accuracy: 1e-6)
        for bad in ["{\"model_type\": \"llama\"}", "{\"model_type\": \"llama\", \"vocab_size\": true}", "{}", "3"] {
            XCTAssertThrowsError(try ModelConfig(jsonData: bad.data(using: .utf8)!), bad)
        }
    }
}

/// Temp-LoRA on a text that repeats: the adapter learns the earlier chunks, so later chunks score
/// better with it than without; the base model never changes.
final class TempLoRATests: XCTestCase {
    func testTempLoRALearnsTheTextAndLeavesTheBase() throws {
        let model = try CausalLM(config: try ModelConfig(vocabSize: ByteTokenizer.vocabSize, hiddenSize: 16, intermediateSize: 24,
                                                         layers: 2, heads: 4, kvHeads: 2), seed: 3)
        // Weights of a size that carries signal (a freshly initialised model is nearly uniform).
        var rng = SplitMix64(seed: 8)
        for e in model.parameters.entries where !e.name.hasSuffix("norm.weight") {
            for i in 0..<e.count { model.parameters.scalars[e.offset + i] = Float(0.3 * rng.nextNormal()) }
        }
        let before = Array(UnsafeBufferPointer(start: model.parameters.scalars, count: model.parameters.count))
        let text = ByteTokenizer.encode(String(repeating: "Blessed are the meek: for they shall inherit the earth. ", count: 12))
        var o = TempLoRAOptions()
        (o.chunk, o.window, o.epochs, o.rank, o.learningRate) = (64, 64, 4, 4, 1e-2)
        let chunks = try runTempLoRA(model: model, tokens: text, options: o)
        XCTAssertEqual(chunks.count, (text.count + 63) / 64)
        XCTAssertEqual(chunks.reduce(0) { $0 + $1.tokens }, text.count - 1, "every token after the first is scored once")
        XCTAssertEqual(chunks[0].adaptedLoss, chunks[0].baseLoss, accuracy: 1e-6, "B = 0 before any training")
        let late = chunks.suffix(4)
        XCTAssertLessThan(late.map(\.adaptedLoss).reduce(0, +), 0.8 * late.map(\.baseLoss).reduce(0, +))
        XCTAssertEqual(Array(UnsafeBufferPointer(start: model.parameters.scalars, count: model.parameters.count)), before)
        var bad = o
        bad.chunk = 1
        XCTAssertThrowsError(try runTempLoRA(model: model, tokens: text, options: bad))
    }
}
