import Foundation

/// One chat message, as transformers passes it to a chat template (a dict with `role` and `content`).
public struct ChatMessage: Sendable, Equatable, Codable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// A Hugging Face chat template: a jinja2 subset, parsed once and rendered as Python's jinja2 renders
/// it under transformers' environment (`ImmutableSandboxedEnvironment(trim_blocks=True,
/// lstrip_blocks=True)` with loop controls, the `generation` tag, `tojson` as `json.dumps(ensure_ascii=False)`,
/// and the globals `raise_exception` and `strftime_now`).
public struct ChatTemplate: Sendable {
    public let source: String
    let nodes: [Node]

    public init(_ source: String) throws {
        self.source = source
        var lexer = Lexer(source)
        let tokens = try lexer.tokenize()
        var parser = Parser(tokens)
        nodes = try parser.parseTemplate()
    }

    /// Renders the conversation. Variables: `messages`, `add_generation_prompt`, `bos_token`, `eos_token`,
    /// `tools` and `documents` (None, as transformers passes them), then `extra` (which may override them).
    /// `strftime_now` formats `now` (local time) if given, else the current date.
    public func render(
        messages: [ChatMessage], addGenerationPrompt: Bool, bosToken: String = "", eosToken: String = "",
        extra: [String: JinjaValue] = [:], now: Date? = nil
    ) throws -> String {
        let list: [JinjaValue] = messages.map { .dict([("role", .string($0.role)), ("content", .string($0.content))]) }
        var vars: [String: JinjaValue] = [
            "messages": .list(list),
            "add_generation_prompt": .bool(addGenerationPrompt),
            "bos_token": .string(bosToken),
            "eos_token": .string(eosToken),
            "tools": .none,
            "documents": .none,
        ]
        for (k, v) in extra { vars[k] = v }
        return try render(variables: vars, now: now)
    }

    /// Renders with exactly these variables (plus the globals).
    public func render(variables: [String: JinjaValue], now: Date? = nil) throws -> String {
        let interp = Interpreter(now: now)
        let globals = Scope(parent: nil)
        interp.globals(into: globals)
        let root = Scope(parent: globals)
        for (k, v) in variables { root.vars[k] = Value(v) }
        _ = try interp.exec(nodes, root)
        return interp.out
    }
}
