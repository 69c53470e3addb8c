// A minimal reader of a GGUF file's tokenizer.ggml.* metadata, for these tests only (the package's
// GGUF reader replaces it). Reads the header, decodes every key/value, keeps the tokenizer's.

import Foundation
import Tokenizers

enum GGUFVocabularyLoader {
    struct Failure: Error, CustomStringConvertible { let description: String }

    enum Value {
        case int(Int64), float(Double), bool(Bool), string(String), array([Value])
        var int: Int64? { if case let .int(v) = self { return v }; return nil }
        var bool: Bool? { if case let .bool(v) = self { return v }; return nil }
        var string: String? { if case let .string(v) = self { return v }; return nil }
        var array: [Value]? { if case let .array(v) = self { return v }; return nil }
    }

    static func metadata(_ url: URL) throws -> [String: Value] {
        let data = try Data(contentsOf: url, options: .alwaysMapped)
        return try data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) -> [String: Value] in
            var at = 0
            func need(_ n: Int) throws { guard n >= 0, at + n <= raw.count else { throw Failure(description: "truncated at \(at)") } }
            func u32() throws -> UInt32 { try need(4); defer { at += 4 }; return raw.loadUnaligned(fromByteOffset: at, as: UInt32.self) }
            func u64() throws -> UInt64 { try need(8); defer { at += 8 }; return raw.loadUnaligned(fromByteOffset: at, as: UInt64.self) }
            func string() throws -> String {
                let n = Int(try u64()); try need(n); defer { at += n }
                return String(decoding: UnsafeRawBufferPointer(rebasing: raw[at..<(at + n)]), as: UTF8.self)
            }
            func value(_ type: UInt32) throws -> Value {
                switch type {
                case 0: try need(1); defer { at += 1 }; return .int(Int64(raw[at]))
                case 1: try need(1); defer { at += 1 }; return .int(Int64(Int8(bitPattern: raw[at])))
                case 2: try need(2); defer { at += 2 }; return .int(Int64(raw.loadUnaligned(fromByteOffset: at, as: UInt16.self)))
                case 3: try need(2); defer { at += 2 }; return .int(Int64(raw.loadUnaligned(fromByteOffset: at, as: Int16.self)))
                case 4: return .int(Int64(try u32()))
                case 5: return .int(Int64(Int32(bitPattern: try u32())))
                case 6: return .float(Double(Float(bitPattern: try u32())))
                case 7: try need(1); defer { at += 1 }; return .bool(raw[at] != 0)
                case 8: return .string(try string())
                case 9:
                    let t = try u32(), n = try u64()
                    guard n < 1 << 28 else { throw Failure(description: "array of \(n)") }
                    var items: [Value] = []
                    items.reserveCapacity(Int(n))
                    for _ in 0..<n { items.append(try value(t)) }
                    return .array(items)
                case 10: return .int(Int64(bitPattern: try u64()))
                case 11: return .int(Int64(bitPattern: try u64()))
                case 12: return .float(Double(bitPattern: try u64()))
                default: throw Failure(description: "value type \(type)")
                }
            }
            guard try u32() == 0x4655_4747 else { throw Failure(description: "not a GGUF file") }
            let version = try u32()
            guard version == 2 || version == 3 else { throw Failure(description: "GGUF version \(version)") }
            _ = try u64()
            let count = try u64()
            guard count < 1 << 20 else { throw Failure(description: "\(count) keys") }
            var out: [String: Value] = [:]
            for _ in 0..<count {
                let key = try string()
                let v = try value(try u32())
                if key.hasPrefix("tokenizer.ggml.") { out[key] = v }
            }
            return out
        }
    }

    static func vocabulary(_ url: URL) throws -> TokenizerVocabulary {
        let m = try metadata(url)
        func id(_ k: String) -> Int32? { m["tokenizer.ggml." + k]?.int.map { Int32($0) } }
        func flag(_ k: String, _ d: Bool) -> Bool { m["tokenizer.ggml." + k]?.bool ?? d }
        guard let tokens = m["tokenizer.ggml.tokens"]?.array?.compactMap({ $0.string }) else { throw Failure(description: "no tokens") }
        let modelName = m["tokenizer.ggml.model"]?.string ?? "llama"
        let model: TokenizerVocabulary.Model
        switch modelName {
        case "gpt2": model = .bytePairEncoding(pre: m["tokenizer.ggml.pre"]?.string ?? "default")
        case "llama": model = .sentencePiece
        default: throw Failure(description: "tokenizer model \(modelName)")
        }
        let scores = m["tokenizer.ggml.scores"]?.array?.map { v -> Float in if case let .float(f) = v { return Float(f) }; return 0 }
        let types = m["tokenizer.ggml.token_type"]?.array?.map { Int32($0.int ?? 1) }
        let merges = m["tokenizer.ggml.merges"]?.array?.compactMap { $0.string }
        var v = TokenizerVocabulary(
            model: model, tokens: tokens, scores: scores, tokenTypes: types, merges: merges,
            bosID: id("bos_token_id"), eosID: id("eos_token_id"), unknownID: id("unknown_token_id"), paddingID: id("padding_token_id"),
            addBOS: flag("add_bos_token", modelName == "llama"), addEOS: flag("add_eos_token", false),
            addSpacePrefix: flag("add_space_prefix", modelName == "llama"))
        if let eot = id("eot_token_id") { v.endOfGenerationIDs.append(eot) }
        if let eom = id("eom_token_id") { v.endOfGenerationIDs.append(eom) }
        return v
    }
}
