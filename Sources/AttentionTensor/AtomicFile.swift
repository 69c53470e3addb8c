import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Files written whole or not at all: the one writer behind `.safetensors` files, configs and
/// training checkpoints. Bytes go to a fresh temporary name beside the target, are fsync'd, and
/// the temporary file is renamed over the target; on any failure the target is untouched.
public enum AtomicFile {
    /// Writes `data` to `path` atomically; throws ``SafeTensorsError`` (`cannotWrite`) naming the path.
    public static func write(_ data: Data, to path: String) throws {
        try SafeTensors.writeAtomically(to: path) { append in
            try data.withUnsafeBytes { try append($0) }
        }
    }

    /// fsync of the directory `path`, so that renames into it survive a crash (a file's own fsync
    /// does not cover its directory entry).
    public static func syncDirectory(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw SafeTensorsError(path: path, problem: .cannotWrite("cannot open the directory: " + String(cString: strerror(errno))))
        }
        defer { close(fd) }
        guard fsync(fd) == 0 else {
            throw SafeTensorsError(path: path, problem: .cannotWrite("fsync of the directory failed: " + String(cString: strerror(errno))))
        }
    }

    /// The size and the 64-bit FNV-1a hash (16 hex digits) of the file at `path`, read in chunks:
    /// what a checkpoint's manifest records to tell its files from those of another save.
    public static func fingerprint(_ path: String) throws -> (bytes: Int, fnv1a64: String) {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw SafeTensorsError(path: path, problem: .cannotRead("cannot open the file"))
        }
        defer { try? handle.close() }
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325, bytes = 0
        while true {
            let chunk = handle.readData(ofLength: 1 << 22)
            if chunk.isEmpty { break }
            bytes += chunk.count
            chunk.withUnsafeBytes { (p: UnsafeRawBufferPointer) in
                for b in p { hash = (hash ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
            }
        }
        let hex = String(hash, radix: 16)
        return (bytes, String(repeating: "0", count: 16 - hex.count) + hex)
    }
}
