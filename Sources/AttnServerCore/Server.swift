import Foundation
import Hummingbird
import LongAttention
import LongContextModel
import Logging
import NIOCore

/// Settings of ``OpenAIServer``.
public struct ServerOptions: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    /// Sequences decoding at once.
    public var parallel = 1
    /// Requests that may wait for a sequence beyond `parallel` (then 429).
    public var queue = 16
    /// The longest prompt + completion, in tokens.
    public var context = 2048
    public var cacheType: KVCacheType = .float32
    public var threads: Int?
    public var maxBodyBytes = 8 << 20
    /// The KV caches' budget in bytes (nil: `parallel` caches of `context` positions).
    public var kvBudgetBytes: Int?
    public var prefillChunk = 256
    /// Finished sequences' KV caches kept for prompts that start alike (0, the default: none);
    /// they use only the budget's spare bytes. Off by default: a reused prefix changes the logits
    /// at float rounding (it was computed in other chunks), which the 8-bit activations of
    /// `--matmul fast` can amplify into another greedy text.
    public var prefixCacheEntries = 0
    public init() {}
}

/// The OpenAI-compatible HTTP API over one ``LongContextModel/LanguageModel``: routes, request
/// checks, streaming, errors. The model runs only on the ``Scheduler``'s thread.
public struct OpenAIResponder: HTTPResponder {
    public typealias Context = BasicRequestContext
    let model: LanguageModel
    let scheduler: Scheduler
    let metrics: ServerMetrics
    let options: ServerOptions
    let created = Int(Date().timeIntervalSince1970)

    public func respond(to request: Request, context: Context) async throws -> Response {
        do {
            return try await route(request, context: context)
        } catch let e as APIError {
            metrics.errors.increment()
            return errorResponse(e)
        } catch {
            metrics.errors.increment()
            context.logger.error("internal error: \(error)")
            return errorResponse(APIError(status: 500, message: "\(error)", type: "server_error"))
        }
    }

    private func route(_ request: Request, context: Context) async throws -> Response {
        let path = request.uri.path.hasSuffix("/") && request.uri.path.count > 1 ? String(request.uri.path.dropLast()) : request.uri.path
        switch (request.method, path) {
        case (.get, "/health"):
            let load = scheduler.load
            return json(200, OpenAIResponse.json(["status": "ok", "model": model.name, "active": load.active, "queued": load.queued]))
        case (.get, "/metrics"):
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: metrics.render())))
        case (.get, "/v1/models"):
            return json(200, OpenAIResponse.json(["object": "list", "data": [modelObject]]))
        case (.get, _) where path.hasPrefix("/v1/models/"):
            let id = String(path.dropFirst("/v1/models/".count))
            guard id == model.name else { throw modelNotFound(id) }
            return json(200, OpenAIResponse.json(modelObject))
        case (.post, "/v1/completions"), (.post, "/completions"):
            return try await complete(request, kind: .completion, context: context)
        case (.post, "/v1/chat/completions"), (.post, "/chat/completions"):
            return try await complete(request, kind: .chat, context: context)
        case (_, "/v1/completions"), (_, "/v1/chat/completions"), (_, "/health"), (_, "/metrics"), (_, "/v1/models"):
            throw APIError(status: 405, message: "\(request.method) is not allowed on \(path)", code: "method_not_allowed")
        default:
            throw APIError(status: 404, message: "no such endpoint: \(request.method) \(path)", code: "not_found")
        }
    }

    private var modelObject: [String: Any] {
        ["id": model.name, "object": "model", "created": created, "owned_by": "swift-long-attention"]
    }

    private func modelNotFound(_ id: String) -> APIError {
        APIError(status: 404, message: "The model '\(id)' does not exist; this server serves '\(model.name)'",
                 code: "model_not_found", param: "model")
    }

    /// The body, at most `maxBodyBytes`; a longer one is read to its end (up to 16× the limit, so
    /// the client sees the answer rather than a reset) and answered 413.
    private func collect(_ request: Request) async throws -> [UInt8] {
        let limit = options.maxBodyBytes
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > 16 * limit {
            throw APIError(status: 413, message: "the request body (\(length) bytes) exceeds the limit of \(limit) bytes",
                           code: "request_too_large")
        }
        var bytes = [UInt8](), total = 0
        for try await buffer in request.body {
            total += buffer.readableBytes
            if total <= limit { bytes += buffer.readableBytesView }
            if total > 16 * limit { break }
        }
        guard total <= limit else {
            throw APIError(status: 413, message: "the request body (\(total)\(total > 16 * limit ? "+" : "") bytes) exceeds the limit of \(limit) bytes",
                           code: "request_too_large")
        }
        return bytes
    }

    private func complete(_ request: Request, kind: CompletionRequest.Kind, context: Context) async throws -> Response {
        let bytes = try await collect(request)
        let r = try CompletionRequest.parse(bytes, kind: kind) { try model.chatPrompt($0) }
        if let m = r.model, m != model.name { throw modelNotFound(m) }
        let ids = model.encode(r.prompt)
        guard !ids.isEmpty else { throw APIError.badRequest("the prompt encodes to no tokens", param: "prompt") }
        guard ids.count < options.context else {
            throw APIError.badRequest("the prompt has \(ids.count) tokens; the context is \(options.context)", code: "context_length_exceeded")
        }
        let room = options.context - ids.count
        let maxTokens = r.maxTokens ?? (kind == .completion ? min(16, room) : room)
        guard maxTokens <= room else {
            throw APIError.badRequest("max_tokens (\(maxTokens)) + the prompt (\(ids.count) tokens) exceed the context of \(options.context) tokens",
                                      param: "max_tokens", code: "context_length_exceeded")
        }
        let generation = GenerationOptions(maxTokens: maxTokens, sampling: r.sampling, stop: r.stop)
        let events: AsyncStream<GenerationEvent>
        do {
            events = try scheduler.submit(prompt: ids, options: generation)
        } catch .busy {
            throw APIError(status: 429, message: "all \(options.parallel) sequences are busy and the queue (\(options.queue)) is full; retry later",
                           type: "rate_limit_error", code: "server_busy", retryAfter: 1)
        } catch .tooLarge(let bytes) {
            throw APIError.badRequest("the request's KV cache (\(bytes) bytes) exceeds the server's budget", code: "context_length_exceeded")
        }
        metrics.requests.increment()
        let prefix = kind == .chat ? "chatcmpl-" : "cmpl-"
        let id = prefix + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(24)
        let created = Int(Date().timeIntervalSince1970), name = model.name

        if !r.stream {
            var text = "", finish = "stop", prompt = ids.count, completion = 0
            for await e in events {
                switch e {
                case .text(let s): text += s
                case .finished(let reason, let p, let c): (finish, prompt, completion) = (reason, p, c)
                case .failed(let message): throw APIError(status: 500, message: message, type: "server_error")
                }
            }
            return json(200, OpenAIResponse.full(kind: kind, id: id, created: created, model: name, text: text,
                                                 finishReason: finish, promptTokens: prompt, completionTokens: completion))
        }

        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-cache"
        let includeUsage = r.includeUsage
        let body = ResponseBody { writer in
            func send(_ data: Data) async throws {
                var b = ByteBuffer()
                b.writeString("data: ")
                b.writeBytes(data)
                b.writeString("\n\n")
                try await writer.write(b)
            }
            if kind == .chat {
                try await send(OpenAIResponse.chunk(kind: kind, id: id, created: created, model: name, text: "", role: true))
            }
            // Leaving this loop (a write failed: the client went away) drops the stream, which
            // cancels the sequence before the scheduler's next round.
            for await e in events {
                switch e {
                case .text(let s):
                    try await send(OpenAIResponse.chunk(kind: kind, id: id, created: created, model: name, text: s))
                case .finished(let reason, let p, let c):
                    try await send(OpenAIResponse.chunk(kind: kind, id: id, created: created, model: name, text: nil, finishReason: reason))
                    if includeUsage {
                        try await send(OpenAIResponse.usageChunk(kind: kind, id: id, created: created, model: name, prompt: p, completion: c))
                    }
                case .failed(let message):
                    try await send(APIError(status: 500, message: message, type: "server_error").body)
                }
            }
            try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: headers, body: body)
    }

    private func json(_ status: Int, _ data: Data) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: HTTPResponse.Status(code: status), headers: headers,
                        body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }

    private func errorResponse(_ e: APIError) -> Response {
        var r = json(e.status, e.body)
        if let s = e.retryAfter { r.headers[.retryAfter] = String(s) }
        return r
    }
}

/// Loads nothing itself: serves `model` with `options` until the process is stopped (SIGINT/SIGTERM).
public enum OpenAIServer {
    public static func run(model: LanguageModel, options: ServerOptions, logger: Logger) async throws {
        let metrics = ServerMetrics()
        let budget = options.kvBudgetBytes ?? options.parallel * DecodingSequence.cacheBytes(
            model: model, promptTokens: options.context, maxTokens: 0, type: options.cacheType, prefillChunk: options.prefillChunk)
        let scheduler = Scheduler(model: model, parallel: options.parallel, queueLimit: options.queue, budgetBytes: budget,
                                  cacheType: options.cacheType, threads: options.threads, prefillChunk: options.prefillChunk,
                                  prefixEntries: options.prefixCacheEntries, metrics: metrics)
        scheduler.start()
        defer { scheduler.stop() }
        let responder = OpenAIResponder(model: model, scheduler: scheduler, metrics: metrics, options: options)
        let host = options.host
        let app = Application(
            responder: responder,
            configuration: ApplicationConfiguration(address: .hostname(host, port: options.port), serverName: "attn-server"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? options.port
                FileHandle.standardError.write(Data("listening on http://\(host):\(port)\n".utf8))
            },
            logger: logger
        )
        try await app.runService()
    }
}
