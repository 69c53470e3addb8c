// The pre-tokenizers of byte-level BPE: hand-written scanners over the UTF-8 bytes of a text that
// split it as llama.cpp's (and Hugging Face's) regular expressions do. Each names its regex.

/// Character classes as bit flags: \p{L}, \p{N}, \s (White_Space), \p{P}.
enum CharClass {
    static let letter: UInt8 = 1
    static let number: UInt8 = 2
    static let space: UInt8 = 4
    static let punctuation: UInt8 = 8

    static func compute(_ v: UInt32) -> UInt8 {
        guard let s = Unicode.Scalar(v) else { return 0 }
        let p = s.properties
        var c: UInt8 = 0
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: c |= letter
        case .decimalNumber, .letterNumber, .otherNumber: c |= number
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation, .initialPunctuation,
             .finalPunctuation, .otherPunctuation: c |= punctuation
        default: break
        }
        if p.isWhitespace { c |= space }
        return c
    }
}

/// Classes of the Basic Multilingual Plane, computed once.
let bmpClasses: [UInt8] = (0..<0x10000).map { CharClass.compute(UInt32($0)) }

/// The pre-tokenizers implemented, by the regex they follow.
enum PreTokenizerKind: Sendable, Equatable {
    /// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    case gpt2
    /// \p{N} first (each digit alone), then the GPT-2 regex (llama.cpp's smollm, starcoder, refact, …).
    case gpt2Digits
    /// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,maxDigits}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
    /// (llama3: maxDigits 3; qwen2: 1).
    case llama3(maxDigits: Int)
    /// llama.cpp's default: [\p{P}\$\+<=>\^~\|]+, then the GPT-2 regex, then \p{N}+, then [0-9][0-9][0-9].
    case defaultBPE

    /// llama.cpp's `tokenizer.ggml.pre` names, by the regexes llama-vocab.cpp gives them.
    static func named(_ name: String) -> (kind: PreTokenizerKind, ignoreMerges: Bool)? {
        switch name {
        case "gpt2", "gpt-2", "phi-2", "jina-es", "jina-de", "mpt", "olmo", "jais", "trillion", "granite-docling", "roberta-bpe":
            return (.gpt2, false)
        case "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b":
            return (.gpt2Digits, false)
        case "llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe":
            return (.llama3(maxDigits: 3), name != "dbrx" && name != "smaug-bpe")
        case "qwen2", "deepseek-r1-qwen", "stablelm2", "hunyuan":
            return (.llama3(maxDigits: 1), false)
        case "default":
            return (.defaultBPE, false)
        default:
            return nil
        }
    }
}

/// A scanner over UTF-8 bytes [start, end) of a buffer; `emit` receives [from, to) byte ranges.
struct PreTokenizer {
    let p: UnsafePointer<UInt8>

    @inline(__always)
    func scalar(_ i: Int, _ end: Int) -> (value: UInt32, length: Int) {
        let b0 = p[i]
        if b0 < 0x80 { return (UInt32(b0), 1) }
        // Swift strings are valid UTF-8: the continuation bytes are present.
        if b0 < 0xE0 { return (UInt32(b0 & 0x1F) << 6 | UInt32(p[i + 1] & 0x3F), 2) }
        if b0 < 0xF0 { return (UInt32(b0 & 0x0F) << 12 | UInt32(p[i + 1] & 0x3F) << 6 | UInt32(p[i + 2] & 0x3F), 3) }
        return (UInt32(b0 & 0x07) << 18 | UInt32(p[i + 1] & 0x3F) << 12 | UInt32(p[i + 2] & 0x3F) << 6 | UInt32(p[i + 3] & 0x3F), 4)
    }

    @inline(__always)
    static func classOf(_ v: UInt32) -> UInt8 {
        if v < 0x10000 { return bmpClasses.withUnsafeBufferPointer { $0[Int(v)] } }
        return CharClass.compute(v)
    }

    @inline(__always)
    func classAt(_ i: Int, _ end: Int) -> (cls: UInt8, value: UInt32, length: Int) {
        let (v, n) = scalar(i, end)
        return (Self.classOf(v), v, n)
    }

    /// Length of a contraction after an apostrophe at i ('s 't 'm 'd 're 've 'll), 0 when none.
    @inline(__always)
    func contraction(_ i: Int, _ end: Int, caseInsensitive: Bool) -> Int {
        guard i + 1 < end else { return 0 }
        var a = p[i + 1]
        if caseInsensitive && a >= 0x41 && a <= 0x5A { a |= 0x20 }
        if a == 0x73 || a == 0x74 || a == 0x6D || a == 0x64 { return 2 }   // s t m d
        guard i + 2 < end else { return 0 }
        var b = p[i + 2]
        if caseInsensitive && b >= 0x41 && b <= 0x5A { b |= 0x20 }
        if (a == 0x72 && b == 0x65) || (a == 0x76 && b == 0x65) || (a == 0x6C && b == 0x6C) { return 3 }   // re ve ll
        return 0
    }

    /// Consumes characters whose class satisfies `accept` from i, at most `limit` of them.
    @inline(__always)
    func run(_ i: Int, _ end: Int, limit: Int = Int.max, _ accept: (UInt8) -> Bool) -> Int {
        var j = i, k = 0
        while j < end && k < limit {
            let (c, _, n) = classAt(j, end)
            if !accept(c) { break }
            j += n; k += 1
        }
        return j
    }

    @inline(__always) static func isOther(_ c: UInt8) -> Bool { c & (CharClass.letter | CharClass.number | CharClass.space) == 0 }

    /// The whitespace run from i: its end and the start of its last character.
    @inline(__always)
    func spaceRun(_ i: Int, _ end: Int) -> (end: Int, lastStart: Int, lastNewlineEnd: Int) {
        var j = i, last = i, nl = -1
        while j < end {
            let (c, v, n) = classAt(j, end)
            if c & CharClass.space == 0 { break }
            if v == 0x0A || v == 0x0D { nl = j + n }
            last = j
            j += n
        }
        return (j, last, nl)
    }

    func gpt2(_ start: Int, _ end: Int, _ emit: (Int, Int) -> Void) {
        var i = start
        while i < end {
            let (c, v, n) = classAt(i, end)
            if v == 0x27 {
                let k = contraction(i, end, caseInsensitive: false)
                if k > 0 { emit(i, i + k); i += k; continue }
            }
            var j = i, cj = c
            if v == 0x20 && i + 1 < end {
                let next = classAt(i + 1, end).cls
                if next & CharClass.space == 0 { j = i + 1; cj = next }
            }
            if cj & CharClass.letter != 0 {
                let e = run(j, end) { $0 & CharClass.letter != 0 }
                emit(i, e); i = e
            } else if cj & CharClass.number != 0 {
                let e = run(j, end) { $0 & CharClass.number != 0 }
                emit(i, e); i = e
            } else if cj & CharClass.space == 0 {
                let e = run(j, end) { Self.isOther($0) }
                emit(i, e); i = e
            } else {
                let r = spaceRun(i, end)
                let e = (r.end == end || r.lastStart == i) ? r.end : r.lastStart
                emit(i, e); i = e
            }
            _ = n
        }
    }

    func gpt2Digits(_ start: Int, _ end: Int, _ emit: (Int, Int) -> Void) {
        var i = start, segment = start
        while i < end {
            let (c, _, n) = classAt(i, end)
            if c & CharClass.number != 0 {
                if segment < i { gpt2(segment, i, emit) }
                emit(i, i + n)
                segment = i + n
            }
            i += n
        }
        if segment < end { gpt2(segment, end, emit) }
    }

    func llama3(_ start: Int, _ end: Int, maxDigits: Int, _ emit: (Int, Int) -> Void) {
        var i = start
        while i < end {
            let (c, v, n) = classAt(i, end)
            if v == 0x27 {
                let k = contraction(i, end, caseInsensitive: true)
                if k > 0 { emit(i, i + k); i += k; continue }
            }
            if c & CharClass.letter != 0 {
                let e = run(i, end) { $0 & CharClass.letter != 0 }
                emit(i, e); i = e; continue
            }
            if v != 0x0A && v != 0x0D && c & CharClass.number == 0 && i + n < end
                && classAt(i + n, end).cls & CharClass.letter != 0 {
                let e = run(i + n, end) { $0 & CharClass.letter != 0 }
                emit(i, e); i = e; continue
            }
            if c & CharClass.number != 0 {
                let e = run(i, end, limit: maxDigits) { $0 & CharClass.number != 0 }
                emit(i, e); i = e; continue
            }
            var j = -1
            if Self.isOther(c) { j = i } else if v == 0x20 && i + 1 < end && Self.isOther(classAt(i + 1, end).cls) { j = i + 1 }
            if j >= 0 {
                var e = run(j, end) { Self.isOther($0) }
                while e < end && (p[e] == 0x0A || p[e] == 0x0D) { e += 1 }
                emit(i, e); i = e; continue
            }
            let r = spaceRun(i, end)
            let e: Int
            if r.lastNewlineEnd >= 0 { e = r.lastNewlineEnd }
            else if r.end == end || r.lastStart == i { e = r.end }
            else { e = r.lastStart }
            emit(i, e); i = e
        }
    }

    func defaultBPE(_ start: Int, _ end: Int, _ emit: (Int, Int) -> Void) {
        // [0-9][0-9][0-9] within a piece: triples of ASCII digits, left to right, and the gaps.
        func digitTriples(_ s: Int, _ e: Int) {
            var i = s, gap = s
            while i + 3 <= e {
                if (0x30...0x39).contains(p[i]) && (0x30...0x39).contains(p[i + 1]) && (0x30...0x39).contains(p[i + 2]) {
                    if gap < i { emit(gap, i) }
                    emit(i, i + 3); i += 3; gap = i
                } else { i += 1 }
            }
            if gap < e { emit(gap, e) }
        }
        // \p{N}+ runs and the gaps between them.
        func numbers(_ s: Int, _ e: Int) {
            var i = s, gap = s
            while i < e {
                let (c, _, n) = classAt(i, e)
                if c & CharClass.number != 0 {
                    let r = run(i, e) { $0 & CharClass.number != 0 }
                    if gap < i { digitTriples(gap, i) }
                    digitTriples(i, r); i = r; gap = r
                } else { i += n }
            }
            if gap < e { digitTriples(gap, e) }
        }
        func symbolic(_ c: UInt8, _ v: UInt32) -> Bool {
            c & CharClass.punctuation != 0 || v == 0x24 || v == 0x2B || v == 0x3C || v == 0x3D || v == 0x3E || v == 0x5E || v == 0x7E || v == 0x7C
        }
        var i = start, gap = start
        while i < end {
            let (c, v, n) = classAt(i, end)
            if symbolic(c, v) {
                var e = i + n
                while e < end { let (c2, v2, n2) = classAt(e, end); if !symbolic(c2, v2) { break }; e += n2 }
                if gap < i { gpt2(gap, i) { numbers($0, $1) } }
                gpt2(i, e) { numbers($0, $1) }
                i = e; gap = e
            } else { i += n }
        }
        if gap < end { gpt2(gap, end) { numbers($0, $1) } }
    }

    func split(_ kind: PreTokenizerKind, _ start: Int, _ end: Int, _ emit: (Int, Int) -> Void) {
        switch kind {
        case .gpt2: gpt2(start, end, emit)
        case .gpt2Digits: gpt2Digits(start, end, emit)
        case let .llama3(d): llama3(start, end, maxDigits: d, emit)
        case .defaultBPE: defaultBPE(start, end, emit)
        }
    }
}
