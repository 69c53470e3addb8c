// libFuzzer entry point over the .safetensors reader: any bytes must give an archive or a typed
// SafeTensorsError with a one-line description — never a crash, a hang, another error type, or
// an allocation the bytes cannot back. What reads as floats must also survive a round trip
// through the writer bit for bit.
//
// `make fuzz` builds this with -sanitize=fuzzer,address and -D FUZZING (main runs libFuzzer's driver).
// Built normally it replays the files named on its command line, so the committed corpus is
// also a regression check.
import AttentionTensor
import Foundation
import FuzzSupport

/// Runs `body`; a thrown error must be a SafeTensorsError whose description is one line.
func typed<R>(_ body: () throws -> R) -> R? {
    do { return try body() } catch let e as SafeTensorsError {
        let text = e.description
        precondition(!text.utf8.contains(0x0a) && !text.utf8.contains(0x0d), "multi-line description: \(text)")
        return nil
    } catch {
        preconditionFailure("untyped error: \(error)")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func safeTensorsFuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    guard let archive = typed({ try SafeTensors.read(bytes: bytes, name: "fuzz") }) else { return 0 }
    precondition(Set(archive.names).count == archive.names.count, "names repeat")
    var floats = [(name: String, tensor: Tensor)]()
    for name in archive.names {
        guard let entry = archive.entry(name) else { preconditionFailure("listed name without an entry") }
        precondition(entry.dataOffsets.upperBound <= bytes.count, "entry past the input")
        if let t = typed({ try archive.tensor(name) }) {
            // F16 and BF16 widen 2 bytes to 4: the most any conversion may ask per input byte.
            precondition(t.count * 4 <= max(bytes.count, 1) * 2, "allocated more than the input could hold")
            precondition(t.shape == entry.shape, "shape changed")
            floats.append((name, t))
        }
        if let values = typed({ try archive.integers(name) }) {
            precondition(values.count <= bytes.count, "more integers than input bytes")
        }
    }
    _ = typed { try archive.tensor("\u{0}not a name") }

    // Everything converted: write it back in memory and read it again, bit for bit.
    guard floats.count == archive.names.count, let encoded = typed({ try SafeTensors.encode(floats, metadata: archive.metadata) }) else {
        return 0
    }
    guard let again = typed({ try SafeTensors.read(bytes: encoded, name: "fuzz-roundtrip") }) else {
        preconditionFailure("the writer's output does not read back")
    }
    precondition(again.names == archive.names && again.metadata == archive.metadata, "names or metadata changed")
    for (name, t) in floats {
        guard let back = typed({ try again.tensor(name) }) else { preconditionFailure("written tensor does not read back") }
        precondition(back.shape == t.shape && back.scalars.map(\.bitPattern) == t.scalars.map(\.bitPattern), "values changed")
    }
    return 0
}

@main
struct SafeTensorsFuzzer {
    static func main() { runFuzzTarget { safeTensorsFuzzOne($0, $1) } }
}
