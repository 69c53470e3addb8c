/// The value types of GGUF metadata, numbered as in the format (gguf.h's `gguf_type`).
public enum GGUFValueType: UInt32, Sendable, CaseIterable {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7
    case string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12

    /// The bytes one value takes in a file, nil for strings and arrays (variable).
    public var fixedSize: Int? {
        switch self {
        case .uint8, .int8, .bool: 1
        case .uint16, .int16: 2
        case .uint32, .int32, .float32: 4
        case .uint64, .int64, .float64: 8
        case .string, .array: nil
        }
    }

    /// The fewest bytes a value can take: a string's 8-byte length, an array's type and count.
    var minimumSize: Int { fixedSize ?? (self == .string ? 8 : 12) }
}

/// One metadata value of a GGUF file.
///
/// Arrays are held by element type (``GGUFArray``), one Swift array per GGUF array, so a
/// vocabulary of 262,144 token strings and their scores is two arrays, not half a million enum
/// values. Equality compares floats by bit pattern, so a value read back from a file equals the
/// value written (NaN included, and -0 differs from 0).
public enum GGUFValue: Sendable, Equatable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32), uint64(UInt64), int64(Int64)
    case float32(Float), float64(Double), bool(Bool), string(String)
    case array(GGUFArray)

    /// An array from values of one type (one scalar type, or all arrays), held typed; an empty
    /// list becomes an empty array of strings (a reader's typed accessors accept an empty array
    /// of any element type). Values of mixed types are a programming error: GGUF cannot store them.
    public static func array(_ values: [GGUFValue]) -> GGUFValue { .array(GGUFArray(values)) }

    public var type: GGUFValueType {
        switch self {
        case .uint8: .uint8
        case .int8: .int8
        case .uint16: .uint16
        case .int16: .int16
        case .uint32: .uint32
        case .int32: .int32
        case .uint64: .uint64
        case .int64: .int64
        case .float32: .float32
        case .float64: .float64
        case .bool: .bool
        case .string: .string
        case .array: .array
        }
    }

    /// "uint32", "string", "array of float32", ...: how errors name the type.
    public var typeName: String {
        if case .array(let a) = self { return "array of \(a.elementType)" }
        return "\(type)"
    }

    /// The value as an integer when it is one of the integer types (nil for others or out of Int's range).
    var integer: Int? {
        switch self {
        case .uint8(let x): Int(x)
        case .int8(let x): Int(x)
        case .uint16(let x): Int(x)
        case .int16(let x): Int(x)
        case .uint32(let x): Int(x)
        case .int32(let x): Int(x)
        case .uint64(let x): Int(exactly: x)
        case .int64(let x): Int(x)
        default: nil
        }
    }

    var isInteger: Bool { [.uint8, .int8, .uint16, .int16, .uint32, .int32, .uint64, .int64].contains(type) }

    public static func == (a: GGUFValue, b: GGUFValue) -> Bool {
        switch (a, b) {
        case let (.uint8(x), .uint8(y)): x == y
        case let (.int8(x), .int8(y)): x == y
        case let (.uint16(x), .uint16(y)): x == y
        case let (.int16(x), .int16(y)): x == y
        case let (.uint32(x), .uint32(y)): x == y
        case let (.int32(x), .int32(y)): x == y
        case let (.uint64(x), .uint64(y)): x == y
        case let (.int64(x), .int64(y)): x == y
        case let (.float32(x), .float32(y)): x.bitPattern == y.bitPattern
        case let (.float64(x), .float64(y)): x.bitPattern == y.bitPattern
        case let (.bool(x), .bool(y)): x == y
        case let (.string(x), .string(y)): x == y
        case let (.array(x), .array(y)): x == y
        default: false
        }
    }
}

/// A GGUF array: elements of one type. Arrays of arrays hold each inner array with its own type,
/// as the format does.
public enum GGUFArray: Sendable, Equatable {
    case uint8([UInt8]), int8([Int8]), uint16([UInt16]), int16([Int16]), uint32([UInt32]), int32([Int32])
    case uint64([UInt64]), int64([Int64])
    case float32([Float]), float64([Double]), bool([Bool]), string([String])
    case array([GGUFArray])

    /// The typed array of `values`, which must all have one type (see ``GGUFValue/array(_:)-swift.type.method``).
    public init(_ values: [GGUFValue]) {
        guard let first = values.first else { self = .string([]); return }
        func all<T>(_ get: (GGUFValue) -> T?) -> [T] {
            values.map { v in
                guard let t = get(v) else { preconditionFailure("a GGUF array holds values of one type: \(first.typeName) and \(v.typeName) given") }
                return t
            }
        }
        switch first {
        case .uint8: self = .uint8(all { if case .uint8(let x) = $0 { x } else { nil } })
        case .int8: self = .int8(all { if case .int8(let x) = $0 { x } else { nil } })
        case .uint16: self = .uint16(all { if case .uint16(let x) = $0 { x } else { nil } })
        case .int16: self = .int16(all { if case .int16(let x) = $0 { x } else { nil } })
        case .uint32: self = .uint32(all { if case .uint32(let x) = $0 { x } else { nil } })
        case .int32: self = .int32(all { if case .int32(let x) = $0 { x } else { nil } })
        case .uint64: self = .uint64(all { if case .uint64(let x) = $0 { x } else { nil } })
        case .int64: self = .int64(all { if case .int64(let x) = $0 { x } else { nil } })
        case .float32: self = .float32(all { if case .float32(let x) = $0 { x } else { nil } })
        case .float64: self = .float64(all { if case .float64(let x) = $0 { x } else { nil } })
        case .bool: self = .bool(all { if case .bool(let x) = $0 { x } else { nil } })
        case .string: self = .string(all { if case .string(let x) = $0 { x } else { nil } })
        case .array: self = .array(all { if case .array(let x) = $0 { x } else { nil } })
        }
    }

    public var elementType: GGUFValueType {
        switch self {
        case .uint8: .uint8
        case .int8: .int8
        case .uint16: .uint16
        case .int16: .int16
        case .uint32: .uint32
        case .int32: .int32
        case .uint64: .uint64
        case .int64: .int64
        case .float32: .float32
        case .float64: .float64
        case .bool: .bool
        case .string: .string
        case .array: .array
        }
    }

    public var count: Int {
        switch self {
        case .uint8(let a): a.count
        case .int8(let a): a.count
        case .uint16(let a): a.count
        case .int16(let a): a.count
        case .uint32(let a): a.count
        case .int32(let a): a.count
        case .uint64(let a): a.count
        case .int64(let a): a.count
        case .float32(let a): a.count
        case .float64(let a): a.count
        case .bool(let a): a.count
        case .string(let a): a.count
        case .array(let a): a.count
        }
    }

    /// The elements one by one (allocates one enum value per element: for small arrays).
    public var values: [GGUFValue] {
        switch self {
        case .uint8(let a): a.map(GGUFValue.uint8)
        case .int8(let a): a.map(GGUFValue.int8)
        case .uint16(let a): a.map(GGUFValue.uint16)
        case .int16(let a): a.map(GGUFValue.int16)
        case .uint32(let a): a.map(GGUFValue.uint32)
        case .int32(let a): a.map(GGUFValue.int32)
        case .uint64(let a): a.map(GGUFValue.uint64)
        case .int64(let a): a.map(GGUFValue.int64)
        case .float32(let a): a.map(GGUFValue.float32)
        case .float64(let a): a.map(GGUFValue.float64)
        case .bool(let a): a.map(GGUFValue.bool)
        case .string(let a): a.map(GGUFValue.string)
        case .array(let a): a.map(GGUFValue.array)
        }
    }

    /// The elements as Ints when the element type is an integer type; the index of the first
    /// element outside Int's range otherwise (only uint64 can be).
    var integers: Result<[Int], IntegerOverflow>? {
        func convert<T: BinaryInteger>(_ a: [T]) -> Result<[Int], IntegerOverflow> {
            var out = [Int]()
            out.reserveCapacity(a.count)
            for (i, x) in a.enumerated() {
                guard let v = Int(exactly: x) else { return .failure(IntegerOverflow(index: i, value: "\(x)")) }
                out.append(v)
            }
            return .success(out)
        }
        switch self {
        case .uint8(let a): return convert(a)
        case .int8(let a): return convert(a)
        case .uint16(let a): return convert(a)
        case .int16(let a): return convert(a)
        case .uint32(let a): return convert(a)
        case .int32(let a): return convert(a)
        case .uint64(let a): return convert(a)
        case .int64(let a): return convert(a)
        default: return nil
        }
    }

    struct IntegerOverflow: Error { var index: Int; var value: String }

    public static func == (a: GGUFArray, b: GGUFArray) -> Bool {
        switch (a, b) {
        case let (.uint8(x), .uint8(y)): x == y
        case let (.int8(x), .int8(y)): x == y
        case let (.uint16(x), .uint16(y)): x == y
        case let (.int16(x), .int16(y)): x == y
        case let (.uint32(x), .uint32(y)): x == y
        case let (.int32(x), .int32(y)): x == y
        case let (.uint64(x), .uint64(y)): x == y
        case let (.int64(x), .int64(y)): x == y
        case let (.float32(x), .float32(y)): x.map(\.bitPattern) == y.map(\.bitPattern)
        case let (.float64(x), .float64(y)): x.map(\.bitPattern) == y.map(\.bitPattern)
        case let (.bool(x), .bool(y)): x == y
        case let (.string(x), .string(y)): x == y
        case let (.array(x), .array(y)): x == y
        default: false
        }
    }
}
