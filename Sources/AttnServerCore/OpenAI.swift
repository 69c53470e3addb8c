import ChatTemplate
import Foundation
import LongContextModel

/// A JSON value decoded strictly (booleans are not numbers, numbers are not strings), so that a
/// request's fields can be checked for their types and refused by name.
public enum JSONValue: Decodable, Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null; return }
        if let b = try? c.decode(Bool.self) { self = .bool(b); return }
        if let d = try? c.decode(Double.self) { self = .number(d); return }
        if let s = try? c.decode(String.self) { self = .string(s); return }
        if let a = try? c.decode([JSONValue].self) { self = .array(a); return }
        self = .object(try c.decode([String: JSONValue].self))
    }

    var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
public struct APIError: Error, Sendable {
    public var status: Int
    public var message: String
    public var type: String
    public var code: String?
    public var param: String?
    /// Seconds for a `Retry-After` header (429).
    public var retryAfter: Int?

    public init(status: Int, message: String, type: String = "invalid_request_error", code: String? = nil,
                param: String? = nil, retryAfter: Int? = nil) {
        (self.status, self.message, self.type, self.code, self.param, self.retryAfter) = (status, message, type, code, param, retryAfter)
    }

    static func badRequest(_ message: String, param: String? = nil, code: String? = nil) -> APIError {
        APIError(status: 400, message: message, code: code, param: param)
    }

    /// The JSON body.
    public var body: Data {
        let error: [String: Any] = ["message": message, "type": type, "param": param ?? NSNull(), "code": code ?? NSNull()]
        return (try? JSONSerialization.data(withJSONObject: ["error": error])) ?? Data()
    }
}

/// What both endpoints accept, parsed and type-checked.
public struct CompletionRequest: Sendable {
    public enum Kind: Sendable { case completion, chat }
    public var kind: Kind
    public var model: String?
    /// The text to continue: the prompt, or the messages rendered by the chat template.
    public var prompt: String
    public var maxTokens: Int?
    public var sampling = SamplingOptions()
    public var stop: [String] = []
    public var stream = false
    public var includeUsage = false

    /// Parses a request body for `kind`; `render` turns chat messages into a prompt (throws for a
    /// model without a template).
    public static func parse(_ body: [UInt8], kind: Kind, render: ([ChatMessage]) throws -> String) throws(APIError) -> CompletionRequest {
        guard String(validating: body, as: UTF8.self) != nil else {
            throw .badRequest("the request body is not valid UTF-8")
        }
        let value: JSONValue
        do {
            value = try JSONDecoder().decode(JSONValue.self, from: Data(body))
        } catch {
            throw .badRequest("the request body is not valid JSON: \(Self.describe(error))")
        }
        guard case .object(let o) = value else { throw .badRequest("the request body must be a JSON object, got \(value.typeName)") }
        var r = CompletionRequest(kind: kind, prompt: "")
        r.model = try string(o, "model")
        switch kind {
        case .completion:
            switch o["prompt"] {
            case .string(let s)?: r.prompt = s
            case .array(let a)? where a.count == 1: 
                guard case .string(let s) = a[0] else { throw .badRequest("'prompt' must be a string or a list of one string", param: "prompt") }
                r.prompt = s
            case nil, .null?: throw .badRequest("'prompt' is required", param: "prompt")
            case let v?: throw .badRequest("'prompt' must be a string (or a list of one string), got \(v.typeName)", param: "prompt")
            }
        case .chat:
            guard case .array(let list)? = o["messages"] else {
                throw .badRequest(o["messages"] == nil ? "'messages' is required" : "'messages' must be an array", param: "messages")
            }
            guard !list.isEmpty else { throw .badRequest("'messages' must not be empty", param: "messages") }
            var messages = [ChatMessage]()
            for (i, m) in list.enumerated() {
                guard case .object(let mo) = m else { throw .badRequest("messages[\(i)] must be an object", param: "messages") }
                guard case .string(let role)? = mo["role"] else { throw .badRequest("messages[\(i)].role must be a string", param: "messages") }
                let content: String
                switch mo["content"] {
                case .string(let s)?: content = s
                case .null?, nil: content = ""
                case .array(let parts)?:
                    var text = ""
                    for p in parts {
                        guard case .object(let po) = p, case .string(let t)? = po["text"] else {
                            throw .badRequest("messages[\(i)].content parts must be {\"type\": \"text\", \"text\": ...}", param: "messages")
                        }
                        text += t
                    }
                    content = text
                case let v?: throw .badRequest("messages[\(i)].content must be a string, got \(v.typeName)", param: "messages")
                }
                messages.append(ChatMessage(role: role, content: content))
            }
            // A template that exists but fails on these messages (its own raise_exception, say
            // "roles must alternate") is the request's fault, not a missing template.
            do { r.prompt = try render(messages) } catch let e as ChatTemplateError {
                throw .badRequest("the model's chat template refused these messages: \(e)", param: "messages", code: "chat_template_error")
            } catch {
                throw .badRequest("the model has no chat template (a base model): use /v1/completions. \(error)", code: "no_chat_template")
            }
        }
        r.maxTokens = try integer(o, kind == .chat && o["max_tokens"] == nil ? "max_completion_tokens" : "max_tokens")
        if let m = r.maxTokens, m < 0 { throw .badRequest("'max_tokens' must be >= 0, got \(m)", param: "max_tokens") }
        if let t = try number(o, "temperature") {
            guard t >= 0, t.isFinite else { throw .badRequest("'temperature' must be >= 0, got \(t)", param: "temperature") }
            r.sampling.temperature = t
        }
        if let p = try number(o, "top_p") {
            guard p > 0, p <= 1 else { throw .badRequest("'top_p' must lie in (0, 1], got \(p)", param: "top_p") }
            r.sampling.topP = p
        }
        if let k = try integer(o, "top_k") {
            guard k >= 0 else { throw .badRequest("'top_k' must be >= 0", param: "top_k") }
            r.sampling.topK = k
        }
        if let p = try number(o, "min_p") {
            guard p >= 0, p <= 1 else { throw .badRequest("'min_p' must lie in [0, 1]", param: "min_p") }
            r.sampling.minP = p
        }
        if let p = try number(o, "repetition_penalty") {
            guard p > 0, p.isFinite else { throw .badRequest("'repetition_penalty' must be positive", param: "repetition_penalty") }
            r.sampling.repetitionPenalty = p
        }
        if let s = try integer(o, "seed") { r.sampling.seed = UInt64(bitPattern: Int64(s)) }
        if let n = try integer(o, "n"), n != 1 { throw .badRequest("only n = 1 is supported", param: "n") }
        switch o["stop"] {
        case nil, .null?: break
        case .string(let s)?: r.stop = [s]
        case .array(let a)?:
            for v in a {
                guard case .string(let s) = v else { throw .badRequest("'stop' must be a string or a list of strings", param: "stop") }
                r.stop.append(s)
            }
            guard r.stop.count <= 16 else { throw .badRequest("'stop' takes at most 16 strings", param: "stop") }
        case let v?: throw .badRequest("'stop' must be a string or a list of strings, got \(v.typeName)", param: "stop")
        }
        switch o["stream"] {
        case nil, .null?: break
        case .bool(let b)?: r.stream = b
        case let v?: throw .badRequest("'stream' must be a boolean, got \(v.typeName)", param: "stream")
        }
        switch o["stream_options"] {
        case nil, .null?: break
        case .object(let so)?:
            if case .bool(let b)? = so["include_usage"] { r.includeUsage = b }
        case let v?: throw .badRequest("'stream_options' must be an object, got \(v.typeName)", param: "stream_options")
        }
        return r
    }

    private static func string(_ o: [String: JSONValue], _ key: String) throws(APIError) -> String? {
        switch o[key] {
        case nil, .null?: return nil
        case .string(let s)?: return s
        case let v?: throw .badRequest("'\(key)' must be a string, got \(v.typeName)", param: key)
        }
    }

    private static func number(_ o: [String: JSONValue], _ key: String) throws(APIError) -> Double? {
        switch o[key] {
        case nil, .null?: return nil
        case .number(let d)?: return d
        case let v?: throw .badRequest("'\(key)' must be a number, got \(v.typeName)", param: key)
        }
    }

    private static func integer(_ o: [String: JSONValue], _ key: String) throws(APIError) -> Int? {
        guard let d = try number(o, key) else { return nil }
        guard d.isFinite, d == d.rounded(), abs(d) < 9.0e15 else {
            throw .badRequest("'\(key)' must be an integer, got \(d)", param: key)
        }
        return Int(d)
    }

    private static func describe(_ error: Error) -> String {
        if case DecodingError.dataCorrupted(let c) = error {
            return c.underlyingError.map { "\($0)" } ?? c.debugDescription
        }
        return "\(error)"
    }
}

/// Bodies of OpenAI's responses and stream chunks.
enum OpenAIResponse {
    static func json(_ object: [String: Any]) -> Data {
        (try? JSONSerialization.data(withJSONObject: object)) ?? Data()
    }

    static func usage(prompt: Int, completion: Int) -> [String: Any] {
        ["prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion]
    }

    static func full(kind: CompletionRequest.Kind, id: String, created: Int, model: String, text: String,
                     finishReason: String, promptTokens: Int, completionTokens: Int) -> Data {
        let choice: [String: Any]
        switch kind {
        case .completion:
            choice = ["index": 0, "text": text, "logprobs": NSNull(), "finish_reason": finishReason]
        case .chat:
            choice = ["index": 0, "message": ["role": "assistant", "content": text], "logprobs": NSNull(),
                      "finish_reason": finishReason]
        }
        return json(["id": id, "object": kind == .chat ? "chat.completion" : "text_completion", "created": created,
                     "model": model, "choices": [choice], "usage": usage(prompt: promptTokens, completion: completionTokens)])
    }

    /// One chunk: `text` (nil with a finish reason: the last chunk), `role` on the chat's first.
    static func chunk(kind: CompletionRequest.Kind, id: String, created: Int, model: String, text: String?,
                      role: Bool = false, finishReason: String? = nil) -> Data {
        let choice: [String: Any]
        switch kind {
        case .completion:
            choice = ["index": 0, "text": text ?? "", "logprobs": NSNull(), "finish_reason": finishReason ?? NSNull()]
        case .chat:
            var delta = [String: Any]()
            if role { delta["role"] = "assistant" }
            if let text { delta["content"] = text }
            choice = ["index": 0, "delta": delta, "logprobs": NSNull(), "finish_reason": finishReason ?? NSNull()]
        }
        return json(["id": id, "object": kind == .chat ? "chat.completion.chunk" : "text_completion", "created": created,
                     "model": model, "choices": [choice]])
    }

    static func usageChunk(kind: CompletionRequest.Kind, id: String, created: Int, model: String, prompt: Int, completion: Int) -> Data {
        json(["id": id, "object": kind == .chat ? "chat.completion.chunk" : "text_completion", "created": created,
              "model": model, "choices": [Any](), "usage": usage(prompt: prompt, completion: completion)])
    }
}
