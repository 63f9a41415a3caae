/* PLACEHOLDER until the GRU4Rec encoder lands: every entry point refuses. */
#include "nfcl.h"
int nfcl_gru_check(const nfcl_gru_config *c){return NFCL_E_ARG;}
int nfcl_gru_num_tensors(const nfcl_gru_config *c){return NFCL_E_ARG;}
int nfcl_gru_tensor(const nfcl_gru_config *c,int k,nfcl_tensor_info *o){return 5;}
int64_t nfcl_gru_num_params(const nfcl_gru_config *c){return 0;}
int64_t nfcl_gru_acts_size(const nfcl_gru_config *c,int B,int T){return 0;}
int64_t nfcl_gru_scratch_size(const nfcl_gru_config *c,int B,int T){return 0;}
int nfcl_gru_init(const nfcl_gru_config *c,float *p,uint64_t s){return NFCL_E_ARG;}
int nfcl_gru_forward(const nfcl_gru_config *c,const float *p,float *a,const int32_t *i,int B,int T,uint64_t s,uint64_t st,int tr,float *q){return 5;}
int nfcl_gru_backward(const nfcl_gru_config *c,const float *p,float *g,const float *a,float *sc,const int32_t *i,int B,int T,uint64_t s,uint64_t st,int tr,const float *dq,nfcl_rowset *rs){return 5;}
