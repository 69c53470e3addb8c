// Decoding ids one at a time, as a generation produces them, without ever splitting a UTF-8 character.

/// Ids in, text out: bytes of a character split across tokens (byte fallback, byte-level pieces) are
/// held until the character is complete; bytes that cannot become a character come out as U+FFFD.
public struct StreamingDecoder {
    public let tokenizer: Tokenizer
    public let skipSpecial: Bool
    private var pending: [UInt8] = []
    private var first = true

    public init(_ tokenizer: Tokenizer, skipSpecial: Bool = false) {
        self.tokenizer = tokenizer
        self.skipSpecial = skipSpecial
    }

    /// The text that the ids so far complete. Throws `TokenizerError.invalidID`.
    public mutating func push(_ id: Int32) throws -> String {
        guard tokenizer.isValid(id) else { throw TokenizerError.invalidID(id) }
        let special = tokenizer.skippable[Int(id)]
        if skipSpecial && special { return "" }
        tokenizer.appendPiece(id, first: first, to: &pending)
        if !special { first = false }
        let cut = Self.completePrefix(pending)
        guard cut > 0 else { return "" }
        let text = String(decoding: pending[0..<cut], as: UTF8.self)
        pending.removeFirst(cut)
        return text
    }

    /// Whatever is held (an incomplete character comes out as U+FFFD); the decoder starts afresh.
    public mutating func finish() -> String {
        let text = String(decoding: pending, as: UTF8.self)
        pending.removeAll()
        first = true
        return text
    }

    /// The length of the prefix to emit now: everything but a trailing incomplete, still valid, sequence.
    static func completePrefix(_ b: [UInt8]) -> Int {
        let n = b.count
        var q = n - 1
        // The start of the last sequence: back over at most three continuation bytes.
        while q >= 0 && q >= n - 4 && b[q] & 0xC0 == 0x80 { q -= 1 }
        guard q >= 0 && q >= n - 4 else { return n }
        let lead = b[q]
        let need: Int
        switch lead {
        case 0xC2...0xDF: need = 2
        case 0xE0...0xEF: need = 3
        case 0xF0...0xF4: need = 4
        default: return n
        }
        let have = n - q
        guard have < need else { return n }
        if have >= 2 {
            let c = b[q + 1]
            let ok: Bool
            switch lead {
            case 0xE0: ok = c >= 0xA0
            case 0xED: ok = c <= 0x9F
            case 0xF0: ok = c >= 0x90
            case 0xF4: ok = c <= 0x8F
            default: ok = true
            }
            if !ok { return n }
        }
        return q
    }
}
