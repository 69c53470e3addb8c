// libFuzzer entry point over the .npy reader: any bytes must give a tensor or a typed
// NumpyError — never a crash, a hang or an allocation the bytes cannot back.
//
// `make fuzz` builds this with -sanitize=fuzzer,address and -D FUZZING (main runs libFuzzer's driver).
// Built normally it replays the files named on its command line, so the committed corpus is
// also a regression check.
import AttentionTensor
import Foundation
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func npyFuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    if let t = try? Numpy.readTensor(bytes: bytes, name: "fuzz") {
        precondition(t.count * 4 <= max(bytes.count, 1) * 2, "allocated more than the input could hold")
    }
    _ = try? Numpy.readIntegers(bytes: bytes, name: "fuzz")
    return 0
}

@main
struct NpyFuzzer {
    static func main() { runFuzzTarget { npyFuzzOne($0, $1) } }
}
