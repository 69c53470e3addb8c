// The tokenizer of the jinja2 subset: splits a template into data and tag tokens, applying
// jinja2's whitespace rules as transformers configures them (trim_blocks, lstrip_blocks,
// keep_trailing_newline off; `-` and `+` modifiers on tags).

struct SourcePos: Sendable, Equatable {
    var line: Int
    var column: Int
}

enum TokenKind: Equatable, Sendable {
    case data(String)
    case variableBegin, variableEnd, blockBegin, blockEnd
    case name(String)
    case string(String)
    case integer(Int)
    case float(Double)
    case op(String)
    case eof
}

struct Token: Sendable {
    var kind: TokenKind
    var pos: SourcePos
}

func isPythonWhitespace(_ c: Unicode.Scalar) -> Bool {
    switch c.value {
    case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
        return true
    default:
        return false
    }
}

struct Lexer {
    let src: [Unicode.Scalar]
    var p = 0
    var line = 1
    var col = 1
    var tokens: [Token] = []
    let trimBlocks = true
    let lstripBlocks = true

    init(_ source: String) {
        // Newlines normalised to \n; one trailing newline dropped (keep_trailing_newline=False).
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(source.unicodeScalars.count)
        var it = Array(source.unicodeScalars)
        var i = 0
        while i < it.count {
            let c = it[i]
            if c == "\r" {
                out.append("\n")
                if i + 1 < it.count && it[i + 1] == "\n" { i += 1 }
            } else {
                out.append(c)
            }
            i += 1
        }
        if out.last == "\n" { out.removeLast() }
        it = []
        src = out
    }

    func err(_ msg: String, _ pos: SourcePos) -> ChatTemplateError {
        .syntax(line: pos.line, column: pos.column, message: msg)
    }

    var pos: SourcePos { SourcePos(line: line, column: col) }

    mutating func advance(_ n: Int = 1) {
        for _ in 0..<n where p < src.count {
            if src[p] == "\n" { line += 1; col = 1 } else { col += 1 }
            p += 1
        }
    }

    func at(_ i: Int) -> Unicode.Scalar? { i < src.count ? src[i] : nil }

    func matches(_ s: String, _ i: Int) -> Bool {
        var j = i
        for c in s.unicodeScalars {
            guard j < src.count, src[j] == c else { return false }
            j += 1
        }
        return true
    }

    /// Where the next `{{`, `{%` or `{#` starts, from index i.
    func nextTagStart(_ i: Int) -> Int? {
        var j = i
        while j + 1 < src.count {
            if src[j] == "{" {
                let n = src[j + 1]
                if n == "{" || n == "%" || n == "#" { return j }
            }
            j += 1
        }
        return nil
    }

    /// Strip rules applied to the text before a tag. `kind` is "{", "%" or "#"; `sign` "-", "+" or "".
    func stripText(_ text: ArraySlice<Unicode.Scalar>, kind: Unicode.Scalar, sign: Unicode.Scalar?, lineStarting: Bool) -> ArraySlice<Unicode.Scalar> {
        if sign == "-" {
            var e = text.endIndex
            while e > text.startIndex && isPythonWhitespace(text[e - 1]) { e -= 1 }
            return text[text.startIndex..<e]
        }
        if sign != "+" && lstripBlocks && kind != "{" {
            var lpos = text.startIndex
            if let nl = text.lastIndex(of: "\n") { lpos = nl + 1 }
            if lpos > text.startIndex || lineStarting {
                let tail = text[lpos...]
                if !tail.isEmpty && tail.allSatisfy(isPythonWhitespace) {
                    return text[text.startIndex..<lpos]
                }
            }
        }
        return text
    }

    mutating func emitData(_ text: ArraySlice<Unicode.Scalar>, _ pos: SourcePos) {
        if text.isEmpty { return }
        var s = String.UnicodeScalarView()
        s.append(contentsOf: text)
        tokens.append(Token(kind: .data(String(s)), pos: pos))
    }

    /// After `%}`: if trim_blocks, one newline is eaten. After `-%}`: all whitespace.
    mutating func consumeTagEnd(length: Int, strip: Bool, plus: Bool, trims: Bool) -> Bool {
        advance(length)
        if strip {
            while let c = at(p), isPythonWhitespace(c) { advance() }
        } else if trims && !plus && trimBlocks && at(p) == "\n" {
            advance()
        }
        return p > 0 && src[p - 1] == "\n"
    }

    /// Try to recognise `{% raw %}` at i (which is `{%`); returns the index after the tag.
    func rawBegin(_ i: Int) -> (end: Int, strip: Bool)? {
        var j = i + 2
        if let c = at(j), c == "-" || c == "+" { j += 1 }
        while let c = at(j), isPythonWhitespace(c) { j += 1 }
        guard matches("raw", j) else { return nil }
        j += 3
        while let c = at(j), isPythonWhitespace(c) { j += 1 }
        if matches("-%}", j) { return (j + 3, true) }
        if matches("%}", j) { return (j + 2, false) }
        return nil
    }

    mutating func tokenize() throws -> [Token] {
        var lineStarting = true
        while p < src.count {
            guard let q = nextTagStart(p) else {
                emitData(src[p...], pos)
                advance(src.count - p)
                break
            }
            let kind = src[q + 1]
            var sign: Unicode.Scalar? = nil
            if let c = at(q + 2), c == "-" || c == "+" { sign = c }
            let textPos = pos
            let text = stripText(src[p..<q], kind: kind, sign: sign, lineStarting: lineStarting)
            emitData(text, textPos)
            advance(q - p)
            let tagPos = pos
            if kind == "#" {
                advance(2 + (sign == nil ? 0 : 1))
                var j = p
                var found = false
                while j + 1 < src.count {
                    if src[j] == "#" && src[j + 1] == "}" { found = true; break }
                    j += 1
                }
                guard found else { throw err("missing end of comment tag", tagPos) }
                let endSign: Unicode.Scalar? = (j > p && (src[j - 1] == "-" || src[j - 1] == "+")) ? src[j - 1] : nil
                advance(j - p)
                lineStarting = consumeTagEnd(length: 2, strip: endSign == "-", plus: endSign == "+", trims: true)
                continue
            }
            if kind == "%", let raw = rawBegin(q) {
                advance(raw.end - q)
                if raw.strip { while let c = at(p), isPythonWhitespace(c) { advance() } }
                // Find {% endraw %}.
                var j = p
                var endTag: (start: Int, sign: Unicode.Scalar?, endLen: Int, strip: Bool, plus: Bool)? = nil
                while let s = nextTagStart(j) {
                    if src[s + 1] == "%" {
                        var k = s + 2
                        var sg: Unicode.Scalar? = nil
                        if let c = at(k), c == "-" || c == "+" { sg = c; k += 1 }
                        while let c = at(k), isPythonWhitespace(c) { k += 1 }
                        if matches("endraw", k) {
                            k += 6
                            while let c = at(k), isPythonWhitespace(c) { k += 1 }
                            if matches("-%}", k) { endTag = (s, sg, k + 3 - s, true, false); break }
                            if matches("+%}", k) { endTag = (s, sg, k + 3 - s, false, true); break }
                            if matches("%}", k) { endTag = (s, sg, k + 2 - s, false, false); break }
                        }
                    }
                    j = s + 1
                }
                guard let e = endTag else { throw err("missing end of raw directive", tagPos) }
                let bodyPos = pos
                let body = stripText(src[p..<e.start], kind: "%", sign: e.sign, lineStarting: false)
                emitData(body, bodyPos)
                advance(e.start - p)
                lineStarting = consumeTagEnd(length: e.endLen, strip: e.strip, plus: e.plus, trims: true)
                continue
            }
            let isBlock = kind == "%"
            tokens.append(Token(kind: isBlock ? .blockBegin : .variableBegin, pos: tagPos))
            advance(2 + (sign == nil ? 0 : 1))
            lineStarting = try lexTag(block: isBlock, start: tagPos)
        }
        tokens.append(Token(kind: .eof, pos: pos))
        return tokens
    }

    /// Lex the inside of a `{{ }}` or `{% %}` up to and including its end; returns whether the
    /// consumed text ended with a newline.
    mutating func lexTag(block: Bool, start: SourcePos) throws -> Bool {
        var balance: [Unicode.Scalar] = []
        while true {
            while let c = at(p), isPythonWhitespace(c) { advance() }
            guard let c = at(p) else {
                throw err(block ? "unexpected end of template: unclosed block tag (missing '%}')"
                                : "unexpected end of template: unclosed variable tag (missing '}}')", start)
            }
            let tpos = pos
            if balance.isEmpty {
                if block {
                    if matches("-%}", p) || matches("+%}", p) || matches("%}", p) {
                        let strip = c == "-", plus = c == "+"
                        tokens.append(Token(kind: .blockEnd, pos: tpos))
                        return consumeTagEnd(length: (strip || plus) ? 3 : 2, strip: strip, plus: plus, trims: true)
                    }
                } else {
                    if matches("-}}", p) || matches("}}", p) {
                        let strip = c == "-"
                        tokens.append(Token(kind: .variableEnd, pos: tpos))
                        return consumeTagEnd(length: strip ? 3 : 2, strip: strip, plus: false, trims: false)
                    }
                }
            }
            if c == "_" || (c.properties.isAlphabetic && c.isASCII) {
                var j = p
                while let d = at(j), d == "_" || (d.isASCII && (d.properties.isAlphabetic || ("0"..."9").contains(d))) { j += 1 }
                var s = String.UnicodeScalarView()
                s.append(contentsOf: src[p..<j])
                tokens.append(Token(kind: .name(String(s)), pos: tpos))
                advance(j - p)
                continue
            }
            if c == "'" || c == "\"" {
                tokens.append(Token(kind: .string(try lexString(quote: c, start: tpos)), pos: tpos))
                continue
            }
            if ("0"..."9").contains(c) {
                tokens.append(Token(kind: try lexNumber(tpos), pos: tpos))
                continue
            }
            var matched: String? = nil
            for o in ["//", "**", "==", "!=", "<=", ">="] where matches(o, p) { matched = o; break }
            if matched == nil {
                let singles: Set<Unicode.Scalar> = ["+", "-", "/", "*", "%", "~", "[", "]", "(", ")", "{", "}", "<", ">", "=", ".", ":", "|", ",", ";"]
                if singles.contains(c) { matched = String(c) }
            }
            guard let o = matched else { throw err("unexpected character '\(c)'", tpos) }
            if o == "(" || o == "[" || o == "{" {
                balance.append(c)
                if balance.count > 500 { throw err("brackets nested too deeply", tpos) }
            } else if o == ")" || o == "]" || o == "}" {
                let open: Unicode.Scalar = o == ")" ? "(" : (o == "]" ? "[" : "{")
                guard let last = balance.last else { throw err("unexpected '\(o)'", tpos) }
                guard last == open else { throw err("unexpected '\(o)', expected closing of '\(last)'", tpos) }
                balance.removeLast()
            }
            tokens.append(Token(kind: .op(o), pos: tpos))
            advance(o.unicodeScalars.count)
        }
    }

    mutating func lexString(quote: Unicode.Scalar, start: SourcePos) throws -> String {
        advance()
        var out = String.UnicodeScalarView()
        while true {
            guard let c = at(p) else { throw err("unterminated string literal", start) }
            if c == quote { advance(); break }
            if c == "\\" {
                guard let n = at(p + 1) else { throw err("unterminated string literal", start) }
                advance(2)
                switch n {
                case "n": out.append("\n")
                case "t": out.append("\t")
                case "r": out.append("\r")
                case "\\": out.append("\\")
                case "'": out.append("'")
                case "\"": out.append("\"")
                case "a": out.append(Unicode.Scalar(7))
                case "b": out.append(Unicode.Scalar(8))
                case "f": out.append(Unicode.Scalar(12))
                case "v": out.append(Unicode.Scalar(11))
                case "\n": break
                case "0"..."7":
                    var v = Int(n.value - 48)
                    var k = 0
                    while k < 2, let d = at(p), ("0"..."7").contains(d) { v = v * 8 + Int(d.value - 48); advance(); k += 1 }
                    guard let u = Unicode.Scalar(v) else { throw err("bad octal escape", start) }
                    out.append(u)
                case "x", "u", "U":
                    let len = n == "x" ? 2 : (n == "u" ? 4 : 8)
                    var v: UInt32 = 0
                    for _ in 0..<len {
                        guard let d = at(p), d.isASCII, let h = UInt32(String(d), radix: 16) else {
                            throw err("truncated \\\(n) escape", start)
                        }
                        v = v * 16 + h
                        advance()
                    }
                    guard let u = Unicode.Scalar(v) else { throw err("invalid \\\(n) escape", start) }
                    out.append(u)
                default:
                    out.append("\\")
                    out.append(n)
                }
                continue
            }
            out.append(c)
            advance()
        }
        return String(out)
    }

    mutating func lexNumber(_ tpos: SourcePos) throws -> TokenKind {
        var j = p
        func digits(_ j: inout Int, _ ok: (Unicode.Scalar) -> Bool) -> String {
            var s = ""
            while let d = at(j) {
                if ok(d) { s.unicodeScalars.append(d); j += 1 }
                else if d == "_", let n = at(j + 1), ok(n), !s.isEmpty { j += 1 }
                else { break }
            }
            return s
        }
        let isDigit: (Unicode.Scalar) -> Bool = { ("0"..."9").contains($0) }
        if src[p] == "0", let x = at(p + 1), "xXoObB".unicodeScalars.contains(x) {
            j = p + 2
            let radix = (x == "x" || x == "X") ? 16 : ((x == "o" || x == "O") ? 8 : 2)
            if at(j) == "_" { j += 1 }
            let s = digits(&j) { UInt32(String($0), radix: radix) != nil }
            guard let v = Int(s, radix: radix) else { throw err("invalid integer literal", tpos) }
            advance(j - p)
            return .integer(v)
        }
        var text = digits(&j, isDigit)
        var isFloat = false
        if at(j) == ".", let d = at(j + 1), isDigit(d) {
            j += 1
            text += "." + digits(&j, isDigit)
            isFloat = true
        }
        if let e = at(j), e == "e" || e == "E" {
            var k = j + 1
            var sign = ""
            if let s = at(k), s == "+" || s == "-" { sign = String(s); k += 1 }
            if let d = at(k), isDigit(d) {
                let ex = digits(&k, isDigit)
                text += "e" + sign + ex
                j = k
                isFloat = true
            }
        }
        advance(j - p)
        if isFloat {
            guard let v = Double(text) else { throw err("invalid float literal", tpos) }
            return .float(v)
        }
        guard let v = Int(text) else { throw err("integer literal too large", tpos) }
        return .integer(v)
    }
}
