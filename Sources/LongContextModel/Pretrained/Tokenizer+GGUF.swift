import AttentionTensor
import Foundation
import Tokenizers

extension GGUFModelDescription {
    /// The tokenizer a GGUF file describes (`tokenizer.ggml.*`): `gpt2` (byte-level BPE with the
    /// pre-tokenizer `tokenizer.ggml.pre` names) or `llama` (SentencePiece BPE by scores).
    static func vocabulary(_ m: GGUFFile, config: ModelConfig) throws -> TokenizerVocabulary {
        let kind = try m.requiredString("tokenizer.ggml.model")
        guard let tokens = try m.strings("tokenizer.ggml.tokens") else {
            throw ModelError.missingConfig(key: "tokenizer.ggml.tokens")
        }
        let model: TokenizerVocabulary.Model
        switch kind {
        case "gpt2": model = .bytePairEncoding(pre: try m.string("tokenizer.ggml.pre") ?? "default")
        case "llama": model = .sentencePiece
        default: throw ModelError.unsupportedConfig(key: "tokenizer.ggml.model", value: "\"\(kind)\"", supported: "gpt2, llama")
        }
        func id(_ k: String) throws -> Int32? {
            guard let v = try m.int(k) else { return nil }
            guard (0..<tokens.count).contains(v) else { throw ModelError.invalidConfig(key: k, value: "\(v)", expected: "in 0..<\(tokens.count) (the vocabulary)") }
            return Int32(v)
        }
        var v = TokenizerVocabulary(
            model: model, tokens: tokens, scores: try m.floats("tokenizer.ggml.scores"),
            tokenTypes: try m.int32s("tokenizer.ggml.token_type"), merges: try m.strings("tokenizer.ggml.merges"),
            bosID: try id("tokenizer.ggml.bos_token_id"), eosID: try id("tokenizer.ggml.eos_token_id"),
            unknownID: try id("tokenizer.ggml.unknown_token_id"), paddingID: try id("tokenizer.ggml.padding_token_id"),
            addBOS: try m.bool("tokenizer.ggml.add_bos_token") ?? (kind == "llama"),
            addEOS: try m.bool("tokenizer.ggml.add_eos_token") ?? false,
            addSpacePrefix: try m.bool("tokenizer.ggml.add_space_prefix") ?? (kind == "llama"))
        if let eot = try id("tokenizer.ggml.eot_token_id") { v.endOfGenerationIDs.append(eot) }
        if let eom = try id("tokenizer.ggml.eom_token_id") { v.endOfGenerationIDs.append(eom) }
        _ = config
        return v
    }
}
