import Foundation
import XCTest
@testable import Tokenizers

enum TestPaths {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func firstDirectory(_ candidates: [String?]) -> URL? {
        for c in candidates.compactMap({ $0 }) where !c.isEmpty {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: c, isDirectory: &isDir), isDir.boolValue { return URL(fileURLWithPath: c) }
        }
        return nil
    }

    /// $TOKENIZERS_MODELS_DIR, else data/models beside or above the package.
    static var models: URL? {
        let env = ProcessInfo.processInfo.environment
        let root = packageRoot.path
        return firstDirectory([env["TOKENIZERS_MODELS_DIR"], root + "/data/models", root + "/../../data/models"])
    }

    /// $SHARED or ../shared.
    static var shared: URL? {
        let env = ProcessInfo.processInfo.environment
        return firstDirectory([env["SHARED"], packageRoot.path + "/../shared"])
    }

    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
}

enum ModelFile: String {
    case smollm2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
    case gemma3 = "gemma-3-270m-q4_k_m.gguf"
}

private func loadModel(_ m: ModelFile) -> Result<Tokenizer, any Error>? {
    guard let dir = TestPaths.models else { return nil }
    let url = dir.appendingPathComponent(m.rawValue)
    guard FileManager.default.fileExists(atPath: url.path) else { return nil }
    return Result { try Tokenizer(GGUFVocabularyLoader.vocabulary(url)) }
}

private let smollm2Tokenizer = loadModel(.smollm2)
private let gemma3Tokenizer = loadModel(.gemma3)

/// The tokenizer of a real model, loaded once; skips when the file is absent.
func modelTokenizer(_ m: ModelFile) throws -> Tokenizer {
    guard let r = m == .smollm2 ? smollm2Tokenizer : gemma3Tokenizer else {
        throw XCTSkip("\(m.rawValue) not found (set TOKENIZERS_MODELS_DIR or run make models)")
    }
    return try r.get()
}

/// A 1-D integer .npy file (little-endian i4 or i8).
func readNpyInts(_ url: URL) throws -> [Int64] {
    let d = [UInt8](try Data(contentsOf: url))
    struct Bad: Error {}
    guard d.count >= 10, d[0] == 0x93, Array(d[1..<6]) == Array("NUMPY".utf8) else { throw Bad() }
    let major = d[6]
    let headerLength: Int, start: Int
    if major == 1 { headerLength = Int(d[8]) | Int(d[9]) << 8; start = 10 }
    else { headerLength = Int(d[8]) | Int(d[9]) << 8 | Int(d[10]) << 16 | Int(d[11]) << 24; start = 12 }
    let header = String(decoding: d[start..<(start + headerLength)], as: UTF8.self)
    let width: Int
    if header.contains("'<i4'") { width = 4 } else if header.contains("'<i8'") { width = 8 } else { throw Bad() }
    let body = Array(d[(start + headerLength)...])
    return stride(from: 0, to: body.count - width + 1, by: width).map { o in
        var v: Int64 = 0
        for k in 0..<width { v |= Int64(body[o + k]) << (8 * Int64(k)) }
        if width == 4 { v = Int64(Int32(truncatingIfNeeded: v)) }
        return v
    }
}

/// A deterministic generator (SplitMix64).
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Random text: ASCII words and punctuation, whitespace runs, accents, CJK, emoji, any scalar.
/// With `sentencePiece`, no ▁ (U+2581): SentencePiece decodes every ▁ to a space.
func randomText(_ g: inout SplitMix, length: Int, sentencePiece: Bool = false) -> String {
    let pools: [[UInt32]] = [
        Array(0x61...0x7A), Array(0x41...0x5A), Array(0x30...0x39), [0x20, 0x20, 0x20, 0x0A, 0x09, 0x0D],
        Array(0x21...0x2F), [0xE9, 0xFC, 0xF1, 0x301, 0x308, 0xE3], Array(0x4E00...0x4E80), Array(0x1F600...0x1F64F),
        [0x1F3FD, 0x200D, 0x2581, 0x0120, 0xFEFF, 0x3000, 0x00A0],
    ]
    var s = String.UnicodeScalarView()
    for _ in 0..<length {
        if g.next() % 10 == 0 {
            // any scalar of the Unicode range (surrogates skipped)
            var v = UInt32(g.next() % 0x110000)
            if (0xD800...0xDFFF).contains(v) || (sentencePiece && v == 0x2581) { v = 0x41 }
            s.append(Unicode.Scalar(v)!)
        } else {
            let pool = pools[Int(g.next() % UInt64(pools.count))]
            let v = pool[Int(g.next() % UInt64(pool.count))]
            s.append(Unicode.Scalar(sentencePiece && v == 0x2581 ? 0x2580 : v)!)
        }
    }
    return String(s)
}
