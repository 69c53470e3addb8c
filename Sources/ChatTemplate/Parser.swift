// The syntax tree and the recursive-descent parser (jinja2's expression grammar and precedence).

enum Literal: Sendable {
    case none, bool(Bool), int(Int), double(Double), string(String)
}

struct Keyword: Sendable {
    var name: String
    var value: Expr
}

indirect enum Expr: Sendable {
    case literal(Literal)
    case name(String, SourcePos)
    case list([Expr])
    case tuple([Expr])
    case dict([(Expr, Expr)])
    case attr(Expr, String, SourcePos)
    case item(Expr, Expr, SourcePos)
    case slice(Expr, Expr?, Expr?, Expr?, SourcePos)
    case call(Expr, [Expr], [Keyword], SourcePos)
    case filter(Expr, String, [Expr], [Keyword], SourcePos)
    case test(Expr, String, [Expr], [Keyword], Bool, SourcePos)
    case neg(Expr, SourcePos)
    case pos(Expr, SourcePos)
    case not(Expr)
    case binary(String, Expr, Expr, SourcePos)
    case and(Expr, Expr)
    case or(Expr, Expr)
    case compare(Expr, [(String, Expr)], SourcePos)
    case cond(Expr, Expr, Expr?)
}

indirect enum Target: Sendable {
    case name(String)
    case attr(String, String, SourcePos)
    case tuple([Target])
}

struct FilterCall: Sendable {
    var name: String
    var args: [Expr]
    var kwargs: [Keyword]
    var pos: SourcePos
}

struct MacroParam: Sendable {
    var name: String
    var defaultValue: Expr?
}

indirect enum Node: Sendable {
    case text(String)
    case output(Expr, SourcePos)
    case ifs([(Expr, [Node])], [Node])
    case forLoop(target: Target, iter: Expr, condition: Expr?, body: [Node], elseBody: [Node], recursive: Bool, pos: SourcePos)
    case set(Target, Expr, SourcePos)
    case setBlock(Target, [FilterCall], [Node], SourcePos)
    case macro(String, [MacroParam], [Node])
    case filterBlock([FilterCall], [Node])
    case breakLoop
    case continueLoop
    case generation([Node])
}

let knownFilters: Set<String> = [
    "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape", "first",
    "float", "forceescape", "format", "indent", "int", "items", "join", "last", "length", "list", "lower", "map",
    "max", "min", "reject", "rejectattr", "replace", "reverse", "round", "safe", "select", "selectattr", "sort",
    "string", "striptags", "sum", "title", "tojson", "trim", "truncate", "unique", "upper", "wordcount", "pprint",
]

let knownTests: Set<String> = [
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "==", "escaped", "even", "false", "filter",
    "float", "ge", ">=", "gt", ">", "greaterthan", "in", "integer", "iterable", "le", "<=", "lessthan", "lower",
    "lt", "<", "mapping", "ne", "!=", "none", "number", "odd", "sameas", "sequence", "string", "test", "true",
    "undefined", "upper",
]

struct Parser {
    var tokens: [Token]
    var i = 0
    var depth = 0
    static let maxDepth = 120

    init(_ tokens: [Token]) { self.tokens = tokens }

    var cur: Token { tokens[i] }
    var peekKind: TokenKind { i + 1 < tokens.count ? tokens[i + 1].kind : .eof }

    func err(_ msg: String, _ pos: SourcePos? = nil) -> ChatTemplateError {
        let p = pos ?? cur.pos
        return .syntax(line: p.line, column: p.column, message: msg)
    }

    mutating func next() -> Token {
        let t = tokens[i]
        if i < tokens.count - 1 { i += 1 }
        return t
    }

    func isOp(_ o: String) -> Bool { if case .op(o) = cur.kind { return true }; return false }
    func isName(_ n: String) -> Bool { if case .name(n) = cur.kind { return true }; return false }

    mutating func expectOp(_ o: String) throws {
        guard isOp(o) else { throw err("expected '\(o)', got \(describe(cur.kind))") }
        _ = next()
    }

    mutating func expectName() throws -> String {
        guard case .name(let n) = cur.kind else { throw err("expected a name, got \(describe(cur.kind))") }
        _ = next()
        return n
    }

    mutating func expectBlockEnd() throws {
        guard case .blockEnd = cur.kind else { throw err("expected end of statement block ('%}'), got \(describe(cur.kind))") }
        _ = next()
    }

    func describe(_ k: TokenKind) -> String {
        switch k {
        case .data: return "template data"
        case .variableBegin: return "'{{'"
        case .variableEnd: return "'}}'"
        case .blockBegin: return "'{%'"
        case .blockEnd: return "'%}'"
        case .name(let n): return "'\(n)'"
        case .string: return "a string"
        case .integer(let v): return "'\(v)'"
        case .float(let v): return "'\(v)'"
        case .op(let o): return "'\(o)'"
        case .eof: return "end of template"
        }
    }

    mutating func enter() throws {
        depth += 1
        if depth > Parser.maxDepth { throw err("template nested too deeply") }
    }

    // MARK: statements

    mutating func parseTemplate() throws -> [Node] {
        let (body, end) = try parseBody(until: [])
        if let end { throw err("unexpected '\(end)'") }
        return body
    }

    /// Parses nodes until a block whose first name is in `until` (left unconsumed: the parser stands
    /// on that name) or the end of the template (returns nil as the end tag).
    mutating func parseBody(until: Set<String>, opener: (String, SourcePos)? = nil) throws -> ([Node], String?) {
        try enter()
        defer { depth -= 1 }
        var nodes: [Node] = []
        while true {
            let t = cur
            switch t.kind {
            case .eof:
                if let opener {
                    let expect = until.sorted().map { "'\($0)'" }.joined(separator: " or ")
                    throw err("unexpected end of template: '\(opener.0)' is not closed (expected \(expect))", opener.1)
                }
                return (nodes, nil)
            case .data(let s):
                _ = next()
                nodes.append(.text(s))
            case .variableBegin:
                _ = next()
                let e = try parseTuple()
                guard case .variableEnd = cur.kind else { throw err("expected end of print statement ('}}'), got \(describe(cur.kind))") }
                _ = next()
                nodes.append(.output(e, t.pos))
            case .blockBegin:
                _ = next()
                guard case .name(let kw) = cur.kind else { throw err("expected a statement name, got \(describe(cur.kind))") }
                if until.contains(kw) { return (nodes, kw) }
                nodes.append(try parseStatement(kw, t.pos))
            default:
                throw err("unexpected \(describe(t.kind))")
            }
        }
    }

    mutating func parseStatement(_ kw: String, _ pos: SourcePos) throws -> Node {
        _ = next()
        switch kw {
        case "if": return try parseIf(pos)
        case "for": return try parseFor(pos)
        case "set": return try parseSet(pos)
        case "macro": return try parseMacro(pos)
        case "filter":
            let filters = try parseFilterChain(first: true)
            try expectBlockEnd()
            let (body, _) = try parseBody(until: ["endfilter"], opener: ("filter", pos))
            _ = next(); try expectBlockEnd()
            return .filterBlock(filters, body)
        case "generation":
            try expectBlockEnd()
            let (body, _) = try parseBody(until: ["endgeneration"], opener: ("generation", pos))
            _ = next(); try expectBlockEnd()
            return .generation(body)
        case "break":
            try expectBlockEnd()
            return .breakLoop
        case "continue":
            try expectBlockEnd()
            return .continueLoop
        default:
            throw err("unknown or unsupported statement '\(kw)'", pos)
        }
    }

    mutating func parseIf(_ pos: SourcePos) throws -> Node {
        var branches: [(Expr, [Node])] = []
        var cond = try parseTupleOrExpr(allowTuple: false)
        try expectBlockEnd()
        while true {
            let (body, end) = try parseBody(until: ["elif", "else", "endif"], opener: ("if", pos))
            branches.append((cond, body))
            _ = next()
            if end == "elif" {
                cond = try parseTupleOrExpr(allowTuple: false)
                try expectBlockEnd()
                continue
            }
            if end == "else" {
                try expectBlockEnd()
                let (elseBody, _) = try parseBody(until: ["endif"], opener: ("if", pos))
                _ = next(); try expectBlockEnd()
                return .ifs(branches, elseBody)
            }
            try expectBlockEnd()
            return .ifs(branches, [])
        }
    }

    mutating func parseAssignTarget(nameOnly: Bool, allowTuple: Bool) throws -> Target {
        var items: [Target] = []
        var sawComma = false
        repeat {
            let p = cur.pos
            let n = try expectName()
            if !nameOnly && isOp(".") {
                _ = next()
                let a = try expectName()
                items.append(.attr(n, a, p))
            } else {
                items.append(.name(n))
            }
            if allowTuple && isOp(",") { _ = next(); sawComma = true } else { break }
        } while true
        if !sawComma { return items[0] }
        return .tuple(items)
    }

    mutating func parseFor(_ pos: SourcePos) throws -> Node {
        let target: Target
        if isOp("(") {
            _ = next()
            target = try parseAssignTarget(nameOnly: true, allowTuple: true)
            try expectOp(")")
        } else {
            target = try parseAssignTarget(nameOnly: true, allowTuple: true)
        }
        guard isName("in") else { throw err("expected 'in' in for loop, got \(describe(cur.kind))") }
        _ = next()
        let iter = try parseTupleOrExpr(allowTuple: true, noCondExpr: true, stopAtName: ["recursive"])
        var condition: Expr? = nil
        if isName("if") {
            _ = next()
            condition = try parseExpression()
        }
        var recursive = false
        if isName("recursive") { _ = next(); recursive = true }
        try expectBlockEnd()
        let (body, end) = try parseBody(until: ["endfor", "else"], opener: ("for", pos))
        _ = next()
        var elseBody: [Node] = []
        if end == "else" {
            try expectBlockEnd()
            (elseBody, _) = try parseBody(until: ["endfor"], opener: ("for", pos))
            _ = next()
        }
        try expectBlockEnd()
        return .forLoop(target: target, iter: iter, condition: condition, body: body, elseBody: elseBody, recursive: recursive, pos: pos)
    }

    mutating func parseSet(_ pos: SourcePos) throws -> Node {
        let target = try parseAssignTarget(nameOnly: false, allowTuple: true)
        if isOp("=") {
            _ = next()
            let value = try parseTuple()
            try expectBlockEnd()
            return .set(target, value, pos)
        }
        var filters: [FilterCall] = []
        if isOp("|") { filters = try parseFilterChain(first: false) }
        try expectBlockEnd()
        let (body, _) = try parseBody(until: ["endset"], opener: ("set", pos))
        _ = next(); try expectBlockEnd()
        return .setBlock(target, filters, body, pos)
    }

    mutating func parseMacro(_ pos: SourcePos) throws -> Node {
        let name = try expectName()
        try expectOp("(")
        var params: [MacroParam] = []
        while !isOp(")") {
            if !params.isEmpty { try expectOp(",") }
            if isOp(")") { break }
            let n = try expectName()
            var d: Expr? = nil
            if isOp("=") { _ = next(); d = try parseExpression() }
            else if params.contains(where: { $0.defaultValue != nil }) { throw err("non-default argument follows default argument") }
            params.append(MacroParam(name: n, defaultValue: d))
        }
        _ = next()
        try expectBlockEnd()
        let (body, _) = try parseBody(until: ["endmacro"], opener: ("macro", pos))
        _ = next()
        if case .name = cur.kind { _ = next() }
        try expectBlockEnd()
        return .macro(name, params, body)
    }

    mutating func parseFilterChain(first: Bool) throws -> [FilterCall] {
        var out: [FilterCall] = []
        var needBar = !first
        while true {
            if needBar {
                guard isOp("|") else { break }
                _ = next()
            }
            needBar = true
            out.append(try parseFilterCall())
        }
        return out
    }

    mutating func parseFilterCall() throws -> FilterCall {
        let p = cur.pos
        var name = try expectName()
        while isOp(".") { _ = next(); name += "." + (try expectName()) }
        guard knownFilters.contains(name) else { throw err("no filter named '\(name)'", p) }
        var args: [Expr] = [], kwargs: [Keyword] = []
        if isOp("(") { (args, kwargs) = try parseCallArgs() }
        return FilterCall(name: name, args: args, kwargs: kwargs, pos: p)
    }

    // MARK: expressions

    mutating func parseTuple() throws -> Expr { try parseTupleOrExpr(allowTuple: true) }

    mutating func parseTupleOrExpr(allowTuple: Bool, noCondExpr: Bool = false, stopAtName: Set<String> = []) throws -> Expr {
        var items: [Expr] = []
        var sawComma = false
        while true {
            if !items.isEmpty {
                guard allowTuple, isOp(",") else { break }
                _ = next()
                sawComma = true
                if case .blockEnd = cur.kind { break }
                if case .variableEnd = cur.kind { break }
                if isOp(")") || isName("if") { break }
                if case .name(let n) = cur.kind, stopAtName.contains(n) { break }
            }
            items.append(noCondExpr ? try parseOr() : try parseExpression())
            if !allowTuple { break }
        }
        if !sawComma { return items[0] }
        return .tuple(items)
    }

    mutating func parseExpression() throws -> Expr {
        try enter()
        defer { depth -= 1 }
        let e = try parseOr()
        if isName("if") {
            _ = next()
            let c = try parseOr()
            var other: Expr? = nil
            if isName("else") { _ = next(); other = try parseExpression() }
            return .cond(e, c, other)
        }
        return e
    }

    mutating func parseOr() throws -> Expr {
        var l = try parseAnd()
        while isName("or") { _ = next(); l = .or(l, try parseAnd()) }
        return l
    }

    mutating func parseAnd() throws -> Expr {
        var l = try parseNot()
        while isName("and") { _ = next(); l = .and(l, try parseNot()) }
        return l
    }

    mutating func parseNot() throws -> Expr {
        if isName("not") {
            _ = next()
            try enter(); defer { depth -= 1 }
            return .not(try parseNot())
        }
        return try parseCompare()
    }

    mutating func parseCompare() throws -> Expr {
        let p = cur.pos
        let l = try parseMath1()
        var ops: [(String, Expr)] = []
        while true {
            if case .op(let o) = cur.kind, ["==", "!=", "<", ">", "<=", ">="].contains(o) {
                _ = next()
                ops.append((o, try parseMath1()))
            } else if isName("in") {
                _ = next()
                ops.append(("in", try parseMath1()))
            } else if isName("not"), case .name("in") = peekKind {
                _ = next(); _ = next()
                ops.append(("notin", try parseMath1()))
            } else {
                break
            }
        }
        return ops.isEmpty ? l : .compare(l, ops, p)
    }

    mutating func parseMath1() throws -> Expr {
        var l = try parseConcat()
        while case .op(let o) = cur.kind, o == "+" || o == "-" {
            let p = cur.pos
            _ = next()
            l = .binary(o, l, try parseConcat(), p)
        }
        return l
    }

    mutating func parseConcat() throws -> Expr {
        var l = try parseMath2()
        while isOp("~") {
            let p = cur.pos
            _ = next()
            l = .binary("~", l, try parseMath2(), p)
        }
        return l
    }

    mutating func parseMath2() throws -> Expr {
        var l = try parsePow()
        while case .op(let o) = cur.kind, ["*", "/", "//", "%"].contains(o) {
            let p = cur.pos
            _ = next()
            l = .binary(o, l, try parsePow(), p)
        }
        return l
    }

    mutating func parsePow() throws -> Expr {
        var l = try parseUnary(withFilter: true)
        while isOp("**") {
            let p = cur.pos
            _ = next()
            l = .binary("**", l, try parseUnary(withFilter: true), p)
        }
        return l
    }

    mutating func parseUnary(withFilter: Bool) throws -> Expr {
        try enter(); defer { depth -= 1 }
        let p = cur.pos
        var node: Expr
        if isOp("-") {
            _ = next()
            node = .neg(try parseUnary(withFilter: false), p)
        } else if isOp("+") {
            _ = next()
            node = .pos(try parseUnary(withFilter: false), p)
        } else {
            node = try parsePrimary()
        }
        node = try parsePostfix(node)
        if withFilter { node = try parseFilterExpr(node) }
        return node
    }

    mutating func parsePrimary() throws -> Expr {
        let t = cur
        switch t.kind {
        case .name(let n):
            _ = next()
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n, t.pos)
            }
        case .string(var s):
            _ = next()
            while case .string(let more) = cur.kind { s += more; _ = next() }
            return .literal(.string(s))
        case .integer(let v):
            _ = next()
            return .literal(.int(v))
        case .float(let v):
            _ = next()
            return .literal(.double(v))
        case .op("("):
            _ = next()
            if isOp(")") { _ = next(); return .tuple([]) }
            let e = try parseTuple()
            try expectOp(")")
            return e
        case .op("["):
            _ = next()
            var items: [Expr] = []
            while !isOp("]") {
                if !items.isEmpty { try expectOp(","); if isOp("]") { break } }
                items.append(try parseExpression())
            }
            _ = next()
            return .list(items)
        case .op("{"):
            _ = next()
            var items: [(Expr, Expr)] = []
            while !isOp("}") {
                if !items.isEmpty { try expectOp(","); if isOp("}") { break } }
                let k = try parseExpression()
                try expectOp(":")
                items.append((k, try parseExpression()))
            }
            _ = next()
            return .dict(items)
        default:
            throw err("unexpected \(describe(t.kind)) in expression")
        }
    }

    mutating func parsePostfix(_ start: Expr) throws -> Expr {
        var node = start
        var n = 0
        while true {
            n += 1
            if n > Parser.maxDepth { throw err("expression nested too deeply") }
            let p = cur.pos
            if isOp(".") {
                _ = next()
                switch cur.kind {
                case .name(let a):
                    _ = next()
                    node = .attr(node, a, p)
                case .integer(let v):
                    _ = next()
                    node = .item(node, .literal(.int(v)), p)
                default:
                    throw err("expected an attribute name after '.', got \(describe(cur.kind))")
                }
            } else if isOp("[") {
                _ = next()
                node = try parseSubscript(node, p)
            } else if isOp("(") {
                let (a, k) = try parseCallArgs()
                node = .call(node, a, k, p)
            } else {
                return node
            }
        }
    }

    mutating func parseSubscript(_ base: Expr, _ p: SourcePos) throws -> Expr {
        var parts: [Expr?] = []
        var isSlice = false
        var current: Expr? = nil
        if !isOp(":") && !isOp("]") { current = try parseExpression() }
        if isOp(":") {
            isSlice = true
            parts.append(current)
            while isOp(":") && parts.count < 3 {
                _ = next()
                if isOp(":") || isOp("]") { parts.append(nil) } else { parts.append(try parseExpression()) }
            }
        }
        if !isSlice {
            guard let c = current else { throw err("expected a subscript expression") }
            var items = [c]
            while isOp(",") {
                _ = next()
                if isOp("]") { break }
                items.append(try parseExpression())
            }
            try expectOp("]")
            return .item(base, items.count == 1 ? c : .tuple(items), p)
        }
        try expectOp("]")
        while parts.count < 3 { parts.append(nil) }
        return .slice(base, parts[0], parts[1], parts[2], p)
    }

    mutating func parseCallArgs() throws -> ([Expr], [Keyword]) {
        try expectOp("(")
        var args: [Expr] = [], kwargs: [Keyword] = []
        var first = true
        while !isOp(")") {
            if !first { try expectOp(","); if isOp(")") { break } }
            first = false
            if case .name(let n) = cur.kind, case .op("=") = peekKind {
                _ = next(); _ = next()
                kwargs.append(Keyword(name: n, value: try parseExpression()))
            } else {
                if !kwargs.isEmpty { throw err("positional argument after keyword argument") }
                args.append(try parseExpression())
            }
        }
        _ = next()
        return (args, kwargs)
    }

    mutating func parseFilterExpr(_ start: Expr) throws -> Expr {
        var node = start
        var n = 0
        while true {
            n += 1
            if n > 200 { throw err("filter chain too long") }
            if isOp("|") {
                _ = next()
                let f = try parseFilterCall()
                node = .filter(node, f.name, f.args, f.kwargs, f.pos)
            } else if isName("is") {
                let p = cur.pos
                _ = next()
                var negated = false
                if isName("not") { _ = next(); negated = true }
                let tp = cur.pos
                var name = try expectName()
                while isOp(".") { _ = next(); name += "." + (try expectName()) }
                guard knownTests.contains(name) else { throw err("no test named '\(name)'", tp) }
                var args: [Expr] = [], kwargs: [Keyword] = []
                if isOp("(") {
                    (args, kwargs) = try parseCallArgs()
                } else {
                    var takesArg = false
                    switch cur.kind {
                    case .name(let a): takesArg = !["else", "or", "and"].contains(a)
                    case .string, .integer, .float, .op("("), .op("["), .op("{"): takesArg = true
                    default: break
                    }
                    if takesArg {
                        args = [try parsePostfix(try parsePrimary())]
                    }
                }
                node = .test(node, name, args, kwargs, negated, p)
            } else if isOp("(") {
                let p = cur.pos
                let (a, k) = try parseCallArgs()
                node = .call(node, a, k, p)
            } else {
                return node
            }
        }
    }
}
