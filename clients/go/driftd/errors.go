package driftd

import (
	"errors"
	"io"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Reason is the driftd ErrorInfo reason of err (an ErrorReason name such as
// "DIMENSION_MISMATCH" or "NOT_ENOUGH_POINTS") with its metadata; "" and nil
// when err carries none.
func Reason(err error) (string, map[string]string) {
	st, ok := status.FromError(err)
	if !ok {
		return "", nil
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == "driftd" {
			return info.GetReason(), info.GetMetadata()
		}
	}
	return "", nil
}

// FieldViolations lists the request fields err's BadRequest names, e.g.
// "points[3].vector".
func FieldViolations(err error) []string {
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	var fields []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}

// Code is err's gRPC status code (codes.OK for nil).
func Code(err error) codes.Code { return status.Code(err) }

func isEOF(err error) bool { return errors.Is(err, io.EOF) }
