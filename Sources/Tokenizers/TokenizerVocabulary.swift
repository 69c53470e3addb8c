// The vocabulary of a tokenizer as GGUF files (and, converted, Hugging Face's tokenizer.json) describe
// it: the token strings by id, their scores and types, the merges of a byte-pair encoding, the special
// ids and the flags that say what `encode` adds.

/// A tokenizer's vocabulary, in llama.cpp's terms (`tokenizer.ggml.*` keys of a GGUF file).
public struct TokenizerVocabulary: Sendable {
    public enum Model: Sendable, Equatable {
        /// GPT-2 byte-level BPE: merges by rank; `pre` is llama.cpp's `tokenizer.ggml.pre` name of the
        /// pre-tokenizer (`gpt2`, `smollm`, `llama3`, `qwen2`, `default`, …).
        case bytePairEncoding(pre: String)
        /// SentencePiece BPE: spaces written `▁`, the highest-scoring pair merged first (or, when `merges`
        /// is given, the lowest-ranked merge, as Hugging Face's BPE does), byte fallback `<0xNN>`.
        case sentencePiece
    }

    /// llama.cpp's token types (`tokenizer.ggml.token_type`).
    public enum TokenType {
        public static let normal: Int32 = 1
        public static let unknown: Int32 = 2
        public static let control: Int32 = 3
        public static let userDefined: Int32 = 4
        public static let unused: Int32 = 5
        public static let byte: Int32 = 6
    }

    public var model: Model
    public var tokens: [String]
    public var scores: [Float]?
    /// 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    public var tokenTypes: [Int32]?
    /// "left right" pairs, highest priority first.
    public var merges: [String]?
    public var bosID: Int32?
    public var eosID: Int32?
    public var unknownID: Int32?
    public var paddingID: Int32?
    public var addBOS: Bool
    public var addEOS: Bool
    public var addSpacePrefix: Bool
    /// Ids that end a generation besides `eosID` (e.g. `<|im_end|>`, `<end_of_turn>`, EOT).
    public var endOfGenerationIDs: [Int32]

    public init(
        model: Model, tokens: [String], scores: [Float]? = nil, tokenTypes: [Int32]? = nil, merges: [String]? = nil,
        bosID: Int32? = nil, eosID: Int32? = nil, unknownID: Int32? = nil, paddingID: Int32? = nil,
        addBOS: Bool = false, addEOS: Bool = false, addSpacePrefix: Bool = false
    ) {
        self.model = model
        self.tokens = tokens
        self.scores = scores
        self.tokenTypes = tokenTypes
        self.merges = merges
        self.bosID = bosID
        self.eosID = eosID
        self.unknownID = unknownID
        self.paddingID = paddingID
        self.addBOS = addBOS
        self.addEOS = addEOS
        self.addSpacePrefix = addSpacePrefix
        self.endOfGenerationIDs = []
    }
}

/// What the tokenizers refuse, and why.
public enum TokenizerError: Error, CustomStringConvertible, Equatable {
    case emptyVocabulary
    /// `scores` or `tokenTypes` (the field) hold a number of entries other than the number of tokens.
    case lengthMismatch(field: String, expected: Int, actual: Int)
    /// A byte-pair-encoding vocabulary without merges.
    case missingMerges
    /// A SentencePiece vocabulary with neither scores nor merges.
    case missingScores
    /// A merge that is not two tokens separated by one space.
    case malformedMerge(index: Int, merge: String)
    /// A merge whose parts or whose concatenation are not tokens of the vocabulary.
    case unknownMergeToken(index: Int, token: String)
    /// A `tokenizer.ggml.pre` name (or a Hugging Face pre-tokenizer) this package does not implement.
    case unknownPreTokenizer(String)
    /// bos/eos/unknown/padding/end-of-generation id outside the vocabulary.
    case specialIDOutOfRange(name: String, id: Int32, vocabularySize: Int)
    /// An id outside the vocabulary given to `decode` or a streaming decoder.
    case invalidID(Int32)
    case unreadableFile(path: String, reason: String)
    case malformedJSON(path: String, reason: String)
    /// A tokenizer.json feature outside the two supported kinds (byte-level BPE, SentencePiece-style BPE):
    /// `field` names the part of the file (`model.type`, `normalizer`, `pre_tokenizer`, …) and `value`
    /// what it holds (`missing` when absent).
    case unsupportedTokenizerJSON(field: String, value: String)

    public var description: String {
        switch self {
        case .emptyVocabulary: return "the vocabulary has no tokens"
        case let .lengthMismatch(field, expected, actual):
            return "the vocabulary's \(field) has \(actual) entries for \(expected) tokens"
        case .missingMerges: return "a byte-pair-encoding vocabulary needs merges"
        case .missingScores: return "a SentencePiece vocabulary needs scores or merges"
        case let .malformedMerge(index, merge): return "merge \(index) (\(merge.debugDescription)) is not two tokens separated by a space"
        case let .unknownMergeToken(index, token): return "merge \(index) uses \(token.debugDescription), which is not a token of the vocabulary"
        case let .unknownPreTokenizer(name): return "unknown pre-tokenizer \(name.debugDescription)"
        case let .specialIDOutOfRange(name, id, size): return "\(name) id \(id) is outside the vocabulary of \(size) tokens"
        case let .invalidID(id): return "token id \(id) is outside the vocabulary"
        case let .unreadableFile(path, reason): return "cannot read \(path): \(reason)"
        case let .malformedJSON(path, reason): return "\(path) is not valid JSON: \(reason)"
        case let .unsupportedTokenizerJSON(field, value): return "unsupported tokenizer.json: \(field) \(value)"
        }
    }
}
