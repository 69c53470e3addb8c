// The README's library examples, built as a client of the package's products (not of its targets).
import AttentionEvaluation
import AttentionTensor
import LongAttention
import LongContextModel
import MixtureOfExperts

let q = try Tensor.randomNormal([1, 4, 64, 16], seed: 1)   // [B, H, N, d]
let k = try Tensor.randomNormal([1, 2, 64, 16], seed: 2)   // [B, Hkv, M, d]
let v = try Tensor.randomNormal([1, 2, 64, 16], seed: 3)
let exact = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .causal)
// Raw access is scoped: the pointer lives inside the closure.
let first = exact.withUnsafePointer { $0[0] }
var scratch = try Tensor(zeros: [8])
scratch.withUnsafeMutableBufferPointer { $0.update(repeating: first) }

let config = try ModelConfig(vocabSize: ByteTokenizer.vocabSize, hiddenSize: 32, intermediateSize: 64, layers: 1,
                             heads: 4, kvHeads: 2)
let model = try CausalLM(config: config, seed: 1)
let tokens = ByteTokenizer.encode("In the beginning")
let gradients = try ParameterSet(zerosLike: model.parameters)
let result = try model.loss(tokens: tokens, batch: 1, length: tokens.count, gradients: gradients)
let continuation = try model.generate(prompt: ByteTokenizer.encode("And"), maxTokens: 4,
                                      sampling: SamplingOptions(temperature: 0.8, topK: 40, seed: 7), cacheType: .int8)
let moe = try MoEConfig(hidden: 32, expertSizes: [64, 64, 64, 64], topK: 2, renormalize: true)
let haystack = try NeedleInAHaystack.Haystack(length: 256)
print("MoE of \(moe.expertSizes.count) experts, a haystack of \(haystack.length) tokens")
print("attention \(exact.shape), loss \(result.loss), \(continuation.count) tokens generated")
