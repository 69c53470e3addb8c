import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How much longer than normal these tests wait for the server: `ATTN_TEST_TIME_SCALE` (default 1). The sanitizer
/// targets set it, since a ThreadSanitizer build of attn-server decodes ten to twenty times slower; a deadline that a
/// sanitizer outlasts is a timing failure, not a finding.
let testTimeScale: Double = {
    guard let s = ProcessInfo.processInfo.environment["ATTN_TEST_TIME_SCALE"], let v = Double(s), v >= 1 else { return 1 }
    return v
}()

/// `seconds` stretched by `testTimeScale`.
func scaled(_ seconds: Double) -> Double { seconds * testTimeScale }

/// A loopback HTTP/1.1 client on a raw socket (one request per connection, `Connection: close`),
/// so tests can send invalid UTF-8, oversized bodies, and drop connections mid-stream.
struct HTTPTestClient {
    struct Response {
        var status: Int
        var headers: [String: String]
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] ?? [:] }
        var errorCode: String? { (json["error"] as? [String: Any])?["code"] as? String }
    }

    enum Failure: Error { case connect(Int32), closed, malformed(String), status(Int, String) }

    let port: Int

    /// A connected socket (receive timeout `timeout` seconds, stretched by `testTimeScale`).
    func connect(timeout: Int = 120) throws -> Int32 {
        signal(SIGPIPE, SIG_IGN)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure.connect(errno) }
        var tv = timeval(tv_sec: Int(scaled(Double(timeout))), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard r == 0 else { let e = errno; close(fd); throw Failure.connect(e) }
        return fd
    }

    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return false }
            sent += n
        }
        return true
    }

    static func requestBytes(_ method: String, _ path: String, body: [UInt8]?, contentType: String = "application/json") -> [UInt8] {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        if let body { head += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n" }
        head += "\r\n"
        return Array(head.utf8) + (body ?? [])
    }

    /// Sends one request and reads the whole response.
    func request(_ method: String, _ path: String, body: [UInt8]? = nil) throws -> Response {
        let fd = try connect()
        defer { close(fd) }
        let bytes = Self.requestBytes(method, path, body: body)
        // A large body is sent from another thread while the response is read (the server may answer early).
        if bytes.count > 1 << 20 {
            let box = UncheckedBox(bytes)
            Thread.detachNewThread { _ = Self.sendAll(fd, box.value) }
        } else {
            _ = Self.sendAll(fd, bytes)
        }
        var reader = Reader(fd: fd)
        return try reader.response()
    }

    /// `/metrics` (Prometheus text format), with its samples looked up by name and labels.
    struct Metrics {
        let text: String
        /// The value of the first sample whose line starts with `prefix` (a metric name, with its
        /// labels or a trailing space to pin one sample): nil when none does or it is not a number.
        func value(_ prefix: String) -> Double? {
            text.split(separator: "\n").first { $0.hasPrefix(prefix) }
                .flatMap { $0.split(separator: " ").last }.flatMap { Double($0) }
        }
    }

    func metrics() throws -> Metrics {
        let r = try request("GET", "/metrics")
        guard r.status == 200 else { throw Failure.status(r.status, r.text) }
        return Metrics(text: r.text)
    }

    func post(_ path: String, _ object: [String: Any]) throws -> Response {
        try request("POST", path, body: Array(try JSONSerialization.data(withJSONObject: object)))
    }

    /// A streamed request: calls `onEvent` with each SSE `data:` payload until it returns false or
    /// the stream ends; returns the status.
    func stream(_ path: String, _ object: [String: Any], onEvent: (String) -> Bool) throws -> Int {
        let fd = try connect()
        defer { close(fd) }
        _ = Self.sendAll(fd, Self.requestBytes("POST", path, body: Array(try JSONSerialization.data(withJSONObject: object))))
        var reader = Reader(fd: fd)
        let (status, headers) = try reader.head()
        var pending = ""
        let chunked = headers["transfer-encoding"]?.lowercased().contains("chunked") ?? false
        while let piece = try (chunked ? reader.chunk() : reader.some()) {
            pending += String(decoding: piece, as: UTF8.self)
            while let r = pending.range(of: "\n\n") {
                let event = String(pending[..<r.lowerBound])
                pending = String(pending[r.upperBound...])
                if event.hasPrefix("data: "), !onEvent(String(event.dropFirst(6))) { return status }
            }
        }
        return status
    }

    struct Reader {
        let fd: Int32
        var buffer = [UInt8]()

        mutating func fill() throws -> Bool {
            var tmp = [UInt8](repeating: 0, count: 65536)
            let n = recv(fd, &tmp, tmp.count, 0)
            if n <= 0 { return false }
            buffer += tmp[0..<n]
            return true
        }

        mutating func line() throws -> String {
            while true {
                if let i = buffer.firstIndex(of: 10) {
                    let l = String(decoding: buffer[..<i], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                    buffer.removeFirst(i + 1)
                    return l
                }
                guard try fill() else { throw Failure.closed }
            }
        }

        mutating func head() throws -> (Int, [String: String]) {
            let status = try line()
            let parts = status.split(separator: " ")
            guard parts.count >= 2, let code = Int(parts[1]) else { throw Failure.malformed(status) }
            var headers = [String: String]()
            while true {
                let l = try line()
                if l.isEmpty { break }
                if let c = l.firstIndex(of: ":") {
                    headers[l[..<c].lowercased()] = l[l.index(after: c)...].trimmingCharacters(in: .whitespaces)
                }
            }
            return (code, headers)
        }

        mutating func exactly(_ n: Int) throws -> [UInt8] {
            while buffer.count < n { guard try fill() else { throw Failure.closed } }
            let out = Array(buffer[..<n])
            buffer.removeFirst(n)
            return out
        }

        /// The next chunk of a chunked body, nil after the last.
        mutating func chunk() throws -> [UInt8]? {
            let size = try line()
            guard let n = Int(size.split(separator: ";")[0], radix: 16) else { throw Failure.malformed(size) }
            if n == 0 { return nil }
            let data = try exactly(n)
            _ = try line()
            return data
        }

        /// Whatever arrives next of an unframed body, nil at the end.
        mutating func some() throws -> [UInt8]? {
            if buffer.isEmpty, try !fill() { return nil }
            defer { buffer = [] }
            return buffer
        }

        mutating func response() throws -> Response {
            let (status, headers) = try head()
            var body = [UInt8]()
            if let l = headers["content-length"].flatMap({ Int($0) }) {
                body = try exactly(l)
            } else if headers["transfer-encoding"]?.lowercased().contains("chunked") ?? false {
                while let c = try chunk() { body += c }
            } else {
                while let c = try some() { body += c }
            }
            return Response(status: status, headers: headers, body: body)
        }
    }
}

final class UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// The `attn-server` binary started on a free loopback port.
final class ServerProcess {
    let process = Process()
    let port: Int
    var client: HTTPTestClient { HTTPTestClient(port: port) }

    static var binary: String? {
        var candidates = [String]()
        if let b = ProcessInfo.processInfo.environment["ATTN_SERVER_BIN"] { candidates.append(b) }
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        candidates.append(exe.appendingPathComponent("attn-server").path)
        candidates.append(exe.deletingLastPathComponent().appendingPathComponent("attn-server").path)
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        candidates.append(root.appendingPathComponent(".build/debug/attn-server").path)
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    static var modelsDirectory: String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return ProcessInfo.processInfo.environment["MODELS_DIR"] ?? root.appendingPathComponent("data/models").path
    }

    enum Failure: Error { case noBinary, didNotStart(String) }

    init(model: String, arguments: [String]) throws {
        guard let binary = Self.binary else { throw Failure.noBinary }
        process.executableURL = URL(fileURLWithPath: binary)
        // The exact path: the tests compare the server's text with LanguageModel's (exact by default).
        process.arguments = ["--model", model, "--port", "0", "--matmul", "exact"] + arguments
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        // Read stderr until the "listening on" line.
        var text = ""
        let deadline = Date().addingTimeInterval(scaled(120))
        var port: Int?
        let handle = err.fileHandleForReading
        while port == nil, Date() < deadline {
            let data = handle.availableData
            if data.isEmpty { break }
            text += String(decoding: data, as: UTF8.self)
            if let r = text.range(of: #"listening on http://127\.0\.0\.1:(\d+)"#, options: .regularExpression) {
                port = Int(text[r].split(separator: ":").last!)
            }
        }
        guard let port else {
            process.terminate()
            throw Failure.didNotStart(text)
        }
        self.port = port
        // Keep draining stderr so the server never blocks on a full pipe.
        Thread.detachNewThread { while !handle.availableData.isEmpty {} }
    }

    var isRunning: Bool { process.isRunning }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    deinit { stop() }
}
