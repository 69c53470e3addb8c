// libFuzzer entry point over the GGUF reader: any bytes must give a file or a typed GGUFError with
// a one-line description — never a crash, a hang, another error type, or an allocation the bytes
// cannot back. Every tensor must lie inside the input; what dequantises must do so from its bytes
// alone; every metadata accessor must answer or throw GGUFError; and the file, written again by
// GGUFWriter, must read back with the same metadata and tensors.
//
// `make fuzz` builds this with -sanitize=fuzzer,address and -D FUZZING (main runs libFuzzer's driver).
// Built normally it replays the files named on its command line, so the committed corpus is
// also a regression check.
import AttentionTensor
import Foundation
import FuzzSupport

/// Runs `body`; a thrown error must be a GGUFError whose description is one line.
func typed<R>(_ body: () throws -> R) -> R? {
    do { return try body() } catch let e as GGUFError {
        let text = e.description
        precondition(!text.utf8.contains(0x0a) && !text.utf8.contains(0x0d), "multi-line description: \(text)")
        return nil
    } catch {
        preconditionFailure("untyped error: \(error)")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func ggufFuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    guard let file = typed({ try GGUFFile(bytes: bytes, name: "fuzz") }) else { return 0 }
    precondition(file.version == 2 || file.version == 3, "version")
    precondition(file.alignment > 0 && file.alignment & (file.alignment - 1) == 0, "alignment")
    precondition(Set(file.tensors.map(\.name)).count == file.tensors.count, "tensor names repeat")
    precondition(file.metadataKeys.count == file.metadata.count, "keys repeat")

    for key in file.metadataKeys {
        _ = typed { try file.string(key) }
        _ = typed { try file.int(key) }
        _ = typed { try file.double(key) }
        _ = typed { try file.bool(key) }
        _ = typed { try file.strings(key) }
        _ = typed { try file.floats(key) }
        _ = typed { try file.int32s(key) }
    }
    _ = typed { try file.requiredString("\u{0}absent") }

    for t in file.tensors {
        precondition(t.offset >= 0 && t.byteCount >= 0 && t.offset + t.byteCount <= bytes.count, "tensor past the input")
        precondition(t.offset % file.alignment == 0, "unaligned tensor")
        precondition(t.shape.count <= GGUFFile.maxDimensions && t.shape.allSatisfy { $0 >= 0 }, "shape")
        precondition(t.type.byteCount(elements: t.elementCount) == t.byteCount, "byte count")
        precondition(file.tensor(named: t.name)?.offset == t.offset, "lookup")
        // A block of 256 elements takes at least 50 bytes: no type expands more than ~21×.
        if t.type.isDequantizable, t.elementCount <= 1 << 20 {
            guard let values = typed({ try file.dequantize(t) }) else { preconditionFailure("a dequantisable tensor failed") }
            precondition(values.count == t.elementCount, "count")
            precondition(values.count * 4 <= max(t.byteCount, 1) * 32, "allocated more than the bytes could hold")
            if t.rowCount > 0, t.rowLength > 0 {
                var row = [Float](repeating: 0, count: t.rowLength)
                _ = typed { try file.dequantizeRows(t, rows: t.rowCount - 1..<t.rowCount, into: &row) }
                let tail = Array(values.suffix(t.rowLength))
                precondition(tail.map(\.bitPattern) == row.map(\.bitPattern), "rows differ from the whole tensor")
            }
        }
    }

    // Written again, it must read back the same.
    var w = GGUFWriter()
    for key in file.metadataKeys { w.set(key, file.metadata[key]!) }
    for t in file.tensors { w.addTensor(name: t.name, shape: t.shape, type: t.type, data: Array(file.bytes(of: t))) }
    guard let encoded = typed({ try w.encode(version: file.version, alignment: file.alignment, name: "fuzz-rewrite") }) else {
        preconditionFailure("the writer refuses what the reader accepted")
    }
    guard let again = typed({ try GGUFFile(bytes: encoded, name: "fuzz-roundtrip") }) else {
        preconditionFailure("the writer's output does not read back")
    }
    precondition(again.metadata == file.metadata && again.metadataKeys == file.metadataKeys, "metadata changed")
    precondition(again.tensors.map(\.name) == file.tensors.map(\.name) && again.tensors.map(\.shape) == file.tensors.map(\.shape)
                 && again.tensors.map(\.type) == file.tensors.map(\.type), "tensors changed")
    for (a, b) in zip(again.tensors, file.tensors) {
        precondition(Array(again.bytes(of: a)) == Array(file.bytes(of: b)), "tensor data changed")
    }
    return 0
}

@main
struct GGUFFuzzer {
    static func main() { runFuzzTarget { ggufFuzzOne($0, $1) } }
}
