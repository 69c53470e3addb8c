// Hugging Face's tokenizer.json (and tokenizer_config.json): byte-level BPE (ByteLevel, Split and
// Digits pre-tokenizers whose regexes match one of llama.cpp's named pre-tokenizers) and
// SentencePiece-style BPE (Replace " " → "▁" / Prepend / Metaspace, byte_fallback).

import Foundation

/// A JSON value; objects keep their keys in order and byte for byte (no dictionary: Swift's String
/// equality would merge canonically equivalent tokens).
enum JSONValue {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    subscript(_ key: String) -> JSONValue? {
        if case let .object(pairs) = self { return pairs.last(where: { $0.0.utf8.elementsEqual(key.utf8) })?.1 }
        return nil
    }
    var string: String? { if case let .string(s) = self { return s }; return nil }
    var bool: Bool? { if case let .bool(b) = self { return b }; return nil }
    var int: Int? { if case let .number(d) = self, d == d.rounded(), abs(d) < 1e15 { return Int(d) }; return nil }
    var array: [JSONValue]? { if case let .array(a) = self { return a }; return nil }
    var isNull: Bool { if case .null = self { return true }; return false }
}

struct JSONParser {
    let b: [UInt8]
    var i = 0

    struct Failure: Error { let reason: String }

    static func parse(_ data: [UInt8]) throws -> JSONValue {
        var p = JSONParser(b: data)
        let v = try p.value(depth: 0)
        p.skip()
        guard p.i == p.b.count else { throw Failure(reason: "trailing characters at byte \(p.i)") }
        return v
    }

    mutating func skip() { while i < b.count && (b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09) { i += 1 } }

    mutating func value(depth: Int) throws -> JSONValue {
        guard depth < 512 else { throw Failure(reason: "nesting too deep") }
        skip()
        guard i < b.count else { throw Failure(reason: "unexpected end") }
        switch b[i] {
        case 0x7B:
            i += 1
            var pairs: [(String, JSONValue)] = []
            skip()
            if i < b.count && b[i] == 0x7D { i += 1; return .object(pairs) }
            while true {
                skip()
                guard i < b.count, b[i] == 0x22 else { throw Failure(reason: "expected a key at byte \(i)") }
                let k = try string()
                skip()
                guard i < b.count, b[i] == 0x3A else { throw Failure(reason: "expected ':' at byte \(i)") }
                i += 1
                pairs.append((k, try value(depth: depth + 1)))
                skip()
                guard i < b.count else { throw Failure(reason: "unexpected end") }
                if b[i] == 0x2C { i += 1; continue }
                if b[i] == 0x7D { i += 1; return .object(pairs) }
                throw Failure(reason: "expected ',' or '}' at byte \(i)")
            }
        case 0x5B:
            i += 1
            var items: [JSONValue] = []
            skip()
            if i < b.count && b[i] == 0x5D { i += 1; return .array(items) }
            while true {
                items.append(try value(depth: depth + 1))
                skip()
                guard i < b.count else { throw Failure(reason: "unexpected end") }
                if b[i] == 0x2C { i += 1; continue }
                if b[i] == 0x5D { i += 1; return .array(items) }
                throw Failure(reason: "expected ',' or ']' at byte \(i)")
            }
        case 0x22: return .string(try string())
        case 0x74: try literal("true"); return .bool(true)
        case 0x66: try literal("false"); return .bool(false)
        case 0x6E: try literal("null"); return .null
        default:
            let s = i
            while i < b.count, let c = Optional(b[i]), (c >= 0x30 && c <= 0x39) || c == 0x2D || c == 0x2B || c == 0x2E || c == 0x65 || c == 0x45 { i += 1 }
            guard i > s, let d = Double(String(decoding: b[s..<i], as: UTF8.self)) else { throw Failure(reason: "bad value at byte \(s)") }
            return .number(d)
        }
    }

    mutating func literal(_ word: String) throws {
        let w = Array(word.utf8)
        guard i + w.count <= b.count, Array(b[i..<(i + w.count)]) == w else { throw Failure(reason: "bad literal at byte \(i)") }
        i += w.count
    }

    mutating func hex4() throws -> UInt32 {
        guard i + 4 <= b.count, let v = UInt32(String(decoding: b[i..<(i + 4)], as: UTF8.self), radix: 16) else {
            throw Failure(reason: "bad \\u escape at byte \(i)")
        }
        i += 4
        return v
    }

    mutating func string() throws -> String {
        i += 1
        var out: [UInt8] = []
        while true {
            guard i < b.count else { throw Failure(reason: "unterminated string") }
            let c = b[i]
            if c == 0x22 { i += 1; break }
            if c != 0x5C { out.append(c); i += 1; continue }
            i += 1
            guard i < b.count else { throw Failure(reason: "unterminated string") }
            let e = b[i]; i += 1
            switch e {
            case 0x22: out.append(0x22)
            case 0x5C: out.append(0x5C)
            case 0x2F: out.append(0x2F)
            case 0x62: out.append(0x08)
            case 0x66: out.append(0x0C)
            case 0x6E: out.append(0x0A)
            case 0x72: out.append(0x0D)
            case 0x74: out.append(0x09)
            case 0x75:
                var v = try hex4()
                if v >= 0xD800 && v < 0xDC00, i + 6 <= b.count, b[i] == 0x5C, b[i + 1] == 0x75 {
                    i += 2
                    let lo = try hex4()
                    if lo >= 0xDC00 && lo < 0xE000 { v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00) } else { v = 0xFFFD }
                }
                let s = Unicode.Scalar(v) ?? "\u{FFFD}"
                out.append(contentsOf: String(s).utf8)
            default: throw Failure(reason: "bad escape at byte \(i - 1)")
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

extension Tokenizer {
    /// The regexes of Hugging Face's Split pre-tokenizers, by llama.cpp pre-tokenizer name.
    static let knownSplitPatterns: [String: String] = [
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+": "gpt2",
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "llama3",
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "qwen2",
    ]

    private static func readJSON(_ url: URL) throws -> JSONValue {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw TokenizerError.unreadableFile(path: url.path, reason: "\(error.localizedDescription)")
        }
        do { return try JSONParser.parse([UInt8](data)) } catch let f as JSONParser.Failure {
            throw TokenizerError.malformedJSON(path: url.path, reason: f.reason)
        }
    }

    /// A token given as a string or as {"content": …} (tokenizer_config.json's two spellings).
    private static func tokenString(_ v: JSONValue?) -> String? {
        guard let v else { return nil }
        if let s = v.string { return s }
        return v["content"]?.string
    }

    /// Loads a Hugging Face tokenizer.json (a BPE model, byte-level or SentencePiece-style) and, when
    /// given, its tokenizer_config.json (add_bos_token, add_eos_token, bos/eos/unk/pad tokens).
    public static func huggingFace(tokenizerJSON: URL, tokenizerConfig: URL?) throws -> Tokenizer {
        let root = try readJSON(tokenizerJSON)
        let config = try tokenizerConfig.map { try readJSON($0) }
        guard let model = root["model"] else { throw TokenizerError.unsupportedTokenizerJSON(field: "model", value: "missing") }
        let type = model["type"]?.string ?? "BPE"
        guard type == "BPE" else { throw TokenizerError.unsupportedTokenizerJSON(field: "model type", value: type) }
        guard case let .object(vocabPairs)? = model["vocab"] else { throw TokenizerError.unsupportedTokenizerJSON(field: "model.vocab", value: "missing") }

        // Tokens by id: the model's vocabulary and the added tokens.
        var byID: [Int: String] = [:]
        for (token, idValue) in vocabPairs {
            guard let id = idValue.int, id >= 0 else { throw TokenizerError.unsupportedTokenizerJSON(field: "model.vocab id of \(token.debugDescription)", value: "\(idValue)") }
            byID[id] = token
        }
        var addedType: [Int: Int32] = [:]
        for added in root["added_tokens"]?.array ?? [] {
            guard let id = added["id"]?.int, id >= 0, let content = added["content"]?.string else {
                throw TokenizerError.unsupportedTokenizerJSON(field: "added_tokens entry", value: "without id or content")
            }
            byID[id] = content
            addedType[id] = added["special"]?.bool == true ? TokenizerVocabulary.TokenType.control : TokenizerVocabulary.TokenType.userDefined
        }
        let count = (byID.keys.max() ?? -1) + 1
        guard count > 0 else { throw TokenizerError.emptyVocabulary }
        guard byID.count == count else {
            throw TokenizerError.unsupportedTokenizerJSON(field: "token ids", value: "not contiguous (\(byID.count) tokens, largest id \(count - 1))")
        }
        let tokens = (0..<count).map { byID[$0]! }

        var pairs: [(String, String)] = []
        for (k, m) in (model["merges"]?.array ?? []).enumerated() {
            if let s = m.string {
                let parts = s.utf8.split(separator: 0x20, maxSplits: 2, omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw TokenizerError.malformedMerge(index: k, merge: s) }
                pairs.append((String(decoding: parts[0], as: UTF8.self), String(decoding: parts[1], as: UTF8.self)))
            } else if let a = m.array, a.count == 2, let l = a[0].string, let r = a[1].string {
                pairs.append((l, r))
            } else {
                throw TokenizerError.malformedMerge(index: k, merge: "\(m)")
            }
        }

        // The pre-tokenizer and normalizer decide the kind.
        func flatten(_ v: JSONValue?, _ key: String) -> [JSONValue] {
            guard let v, !v.isNull else { return [] }
            if v["type"]?.string == "Sequence" { return (v[key]?.array ?? []).flatMap { flatten($0, key) } }
            return [v]
        }
        let pres = flatten(root["pre_tokenizer"], "pretokenizers")
        let norms = flatten(root["normalizer"], "normalizers")
        var options = Tokenizer.Options()
        options.ignoreMerges = model["ignore_merges"]?.bool ?? false
        options.byteFallback = model["byte_fallback"]?.bool ?? false
        let modelKind: TokenizerVocabulary.Model
        let byteLevel = pres.contains { $0["type"]?.string == "ByteLevel" }
        if byteLevel {
            guard norms.isEmpty else { throw TokenizerError.unsupportedTokenizerJSON(field: "normalizer", value: "given with a byte-level pre-tokenizer") }
            var pre: String? = nil
            var digits = false
            for p in pres {
                switch p["type"]?.string ?? "" {
                case "ByteLevel":
                    if p["add_prefix_space"]?.bool == true { throw TokenizerError.unsupportedTokenizerJSON(field: "ByteLevel add_prefix_space", value: "true") }
                    if p["use_regex"]?.bool ?? true {
                        guard pre == nil else { throw TokenizerError.unsupportedTokenizerJSON(field: "pre_tokenizer", value: "two splitting regexes") }
                        pre = "gpt2"
                    }
                case "Split":
                    guard let pattern = p["pattern"]?["Regex"]?.string, let name = knownSplitPatterns[pattern] else {
                        throw TokenizerError.unknownPreTokenizer("Split \(p["pattern"].map { "\($0)" } ?? "")")
                    }
                    guard pre == nil else { throw TokenizerError.unsupportedTokenizerJSON(field: "pre_tokenizer", value: "two splitting regexes") }
                    pre = name
                case "Digits":
                    guard p["individual_digits"]?.bool == true, pre == nil else {
                        throw TokenizerError.unsupportedTokenizerJSON(field: "Digits pre-tokenizer", value: "other than individual digits first")
                    }
                    digits = true
                default:
                    throw TokenizerError.unknownPreTokenizer(p["type"]?.string ?? "?")
                }
            }
            guard var name = pre else { throw TokenizerError.unsupportedTokenizerJSON(field: "ByteLevel pre-tokenizer", value: "without a splitting regex") }
            if digits {
                guard name == "gpt2" else { throw TokenizerError.unsupportedTokenizerJSON(field: "Digits pre-tokenizer", value: "before \(name)") }
                name = "smollm"
            }
            modelKind = .bytePairEncoding(pre: name)
        } else {
            var replaces = false
            var prefix: Tokenizer.SpacePrefix = .never
            for nrm in norms {
                switch nrm["type"]?.string ?? "" {
                case "Replace":
                    guard nrm["pattern"]?["String"]?.string == " ", nrm["content"]?.string == "\u{2581}" else {
                        throw TokenizerError.unsupportedTokenizerJSON(field: "Replace normalizer", value: "other than \" \" → \"▁\"")
                    }
                    replaces = true
                case "Prepend":
                    guard nrm["prepend"]?.string == "\u{2581}" else { throw TokenizerError.unsupportedTokenizerJSON(field: "Prepend normalizer", value: "other than \"▁\"") }
                    prefix = .always
                default: throw TokenizerError.unsupportedTokenizerJSON(field: "normalizer", value: nrm["type"]?.string ?? "?")
                }
            }
            for p in pres {
                // Split on " " after a Replace " " → "▁" normalizer finds no space: nothing to do.
                if p["type"]?.string == "Split", p["pattern"]?["String"]?.string == " ", replaces { continue }
                guard p["type"]?.string == "Metaspace", p["replacement"]?.string ?? "\u{2581}" == "\u{2581}",
                      p["split"]?.bool != true else {
                    throw TokenizerError.unknownPreTokenizer(p["type"]?.string ?? "?")
                }
                replaces = true
                switch p["prepend_scheme"]?.string ?? (p["add_prefix_space"]?.bool == false ? "never" : "always") {
                case "always": prefix = .always
                case "first": prefix = .first
                default: prefix = .never
                }
            }
            guard replaces else { throw TokenizerError.unsupportedTokenizerJSON(field: "pre_tokenizer", value: "neither ByteLevel nor a ▁ normalizer") }
            options.spacePrefix = prefix
            modelKind = .sentencePiece
        }

        var types = [Int32](repeating: TokenizerVocabulary.TokenType.normal, count: count)
        for (id, t) in addedType { types[id] = t }
        if case .sentencePiece = modelKind {
            for (id, t) in tokens.enumerated() where addedType[id] == nil && parseByteToken(t) != nil { types[id] = TokenizerVocabulary.TokenType.byte }
        }
        func id(of token: String?) -> Int32? {
            guard let token else { return nil }
            return tokens.lastIndex(where: { $0.utf8.elementsEqual(token.utf8) }).map { Int32($0) }
        }
        let unk = id(of: model["unk_token"]?.string) ?? id(of: tokenString(config?["unk_token"]))
        if let unk, addedType[Int(unk)] == nil { types[Int(unk)] = TokenizerVocabulary.TokenType.unknown }

        // BOS/EOS: tokenizer_config.json first, else the post-processor's template.
        var bos = id(of: tokenString(config?["bos_token"]))
        let eos = id(of: tokenString(config?["eos_token"]))
        var addBOS = config?["add_bos_token"]?.bool
        var addEOS = config?["add_eos_token"]?.bool
        let post = flatten(root["post_processor"], "processors").first { $0["type"]?.string == "TemplateProcessing" }
        if let single = post?["single"]?.array, !single.isEmpty {
            if let first = single.first?["SpecialToken"]?["id"]?.string {
                if addBOS == nil { addBOS = true }
                if bos == nil { bos = id(of: first) }
            }
            if single.count > 1, single.last?["SpecialToken"] != nil, addEOS == nil { addEOS = true }
        }

        var vocabulary = TokenizerVocabulary(
            model: modelKind, tokens: tokens, scores: nil, tokenTypes: types,
            merges: pairs.map { $0.0 + " " + $0.1 },
            bosID: bos, eosID: eos, unknownID: unk, paddingID: id(of: tokenString(config?["pad_token"])),
            addBOS: (addBOS ?? false) && bos != nil, addEOS: (addEOS ?? false) && eos != nil,
            addSpacePrefix: options.spacePrefix.map { $0 != .never } ?? false)
        if let extra = config?["additional_special_tokens"]?.array {
            vocabulary.endOfGenerationIDs = extra.compactMap { id(of: tokenString($0)) }
                .filter { Tokenizer.endOfGenerationNames.contains(tokens[Int($0)]) }
        }
        return try Tokenizer(vocabulary: vocabulary, mergePairs: pairs, options: options)
    }
}
