import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

#if _endian(big)
#error("the safetensors writer copies Float32 memory as little-endian bytes; add byte swapping for big-endian hosts")
#endif

extension SafeTensors {
    /// Writes Float32 tensors (views are written in row-major order) as a `.safetensors` file.
    ///
    /// Tensors go into the header and the data buffer in the order given, so reading the file
    /// back lists ``SafeTensorsArchive/names`` in that order. (The Python library orders by dtype,
    /// then name; with names given sorted, the bytes are the ones it writes.) `metadata` becomes
    /// `__metadata__`, keys sorted, and is left out when empty. The header is padded with spaces
    /// to a multiple of 8 bytes, so the data buffer starts 8-byte aligned.
    ///
    /// Names must be non-empty, unique, and not `__metadata__`; they are checked before anything
    /// is created. The file is written to a temporary name in the same directory, flushed to
    /// disk, then renamed over `path`, so `path` never holds a partial file: after a failure it
    /// holds whatever it held before.
    public static func write(_ tensors: [(name: String, tensor: Tensor)], metadata: [String: String] = [:], to path: String) throws {
        let header = try headerBytes(tensors.map { ($0.name, $0.tensor.shape) }, metadata: metadata, path: path)
        try writeAtomically(to: path) { emit in
            try header.withUnsafeBytes { try emit($0) }
            for (_, tensor) in tensors {
                let t = tensor.contiguous()
                try t.withUnsafePointer { p in try emit(UnsafeRawBufferPointer(start: p, count: t.count * MemoryLayout<Float>.stride)) }
            }
        }
    }

    /// The bytes ``write(_:metadata:to:)`` writes, in memory (`name` labels errors).
    public static func encode(_ tensors: [(name: String, tensor: Tensor)], metadata: [String: String] = [:],
                              name: String = "<memory>") throws -> [UInt8] {
        var bytes = try headerBytes(tensors.map { ($0.name, $0.tensor.shape) }, metadata: metadata, path: name)
        for (_, tensor) in tensors {
            for x in tensor.scalars { withUnsafeBytes(of: x.bitPattern.littleEndian) { bytes.append(contentsOf: $0) } }
        }
        return bytes
    }

    /// The 8-byte length and the space-padded JSON header for F32 tensors of these shapes, laid
    /// out back to back in the order given. Written as `serde_json` (the reference) writes it:
    /// no whitespace, fields in the order dtype, shape, data_offsets.
    static func headerBytes(_ tensors: [(name: String, shape: [Int])], metadata: [String: String], path: String) throws -> [UInt8] {
        var seen = Set<String>()
        for (name, _) in tensors {
            guard !name.isEmpty, name != "__metadata__" else { throw SafeTensorsError(path: path, problem: .invalidName(name)) }
            guard seen.insert(name).inserted else { throw SafeTensorsError(path: path, problem: .duplicateName(name)) }
        }
        var json = "{"
        var first = true
        if !metadata.isEmpty {
            json += "\"__metadata__\":{"
                + metadata.sorted { $0.key < $1.key }.map { jsonString($0.key) + ":" + jsonString($0.value) }.joined(separator: ",")
                + "}"
            first = false
        }
        var offset = 0
        for (name, shape) in tensors {
            // The tensor exists in memory, so its byte count fits.
            let end = offset + shape.reduce(1, *) * MemoryLayout<Float>.stride
            if !first { json += "," }
            first = false
            json += jsonString(name) + ":{\"dtype\":\"F32\",\"shape\":[" + shape.map(String.init).joined(separator: ",")
                + "],\"data_offsets\":[\(offset),\(end)]}"
            offset = end
        }
        json += "}"
        var text = Array(json.utf8)
        text += [UInt8](repeating: 0x20, count: (8 - text.count % 8) % 8)
        return withUnsafeBytes(of: UInt64(text.count).littleEndian, Array.init) + text
    }

    /// A JSON string literal escaped as `serde_json` escapes it: quote, backslash and control
    /// characters (the short forms where JSON has them), everything else as UTF-8. The JSON
    /// string escaper of every module above this one (config.json and adapter_config.json use it
    /// too); ChatTemplate, which depends on nothing here, keeps its own for `tojson` (which also
    /// has Python's `ensure_ascii` form).
    public static func jsonString(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case let c where c.value < 0x20:
                let hex = String(c.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// Runs `body` with a function that appends bytes to a new temporary file beside `path`,
    /// then flushes the file and renames it to `path`. On any failure the temporary file is
    /// removed and `path` is untouched.
    static func writeAtomically(to path: String, _ body: ((UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws {
        func failure(_ what: String) -> SafeTensorsError {
            SafeTensorsError(path: path, problem: .cannotWrite(what + ": " + String(cString: strerror(errno))))
        }
        // A fresh name per call (O_EXCL refuses an existing one), so concurrent writers of the same
        // path, even in one process, never share a temporary file. Mode 0666 lets the umask decide,
        // as for any new file.
        let tmp = path + ".partial-\(getpid())-\(String(UInt64.random(in: 0...UInt64.max), radix: 36))"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o666)
        guard fd >= 0 else { throw failure("cannot create \(tmp)") }
        var closed = false
        do {
            try body { bytes in
                guard var p = bytes.baseAddress else { return }
                var left = bytes.count
                while left > 0 {
                    let n = Platform.write(fd, p, min(left, 1 << 30))
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw failure("write failed")
                    }
                    p += n
                    left -= n
                }
            }
            // Flushed before the rename: otherwise a crash soon after could leave `path` renamed
            // but empty on file systems that order metadata before data.
            guard fsync(fd) == 0 else { throw failure("fsync failed") }
            closed = true
            guard close(fd) == 0 else { throw failure("close failed") }
            guard rename(tmp, path) == 0 else { throw failure("cannot rename \(tmp) to \(path)") }
        } catch {
            if !closed { close(fd) }
            unlink(tmp)
            throw error
        }
    }
}
