/* PLACEHOLDER until the Caser encoder lands: every entry point refuses. */
#include "nfcl.h"
int nfcl_caser_check(const nfcl_caser_config *c){return NFCL_E_ARG;}
int nfcl_caser_num_tensors(const nfcl_caser_config *c){return NFCL_E_ARG;}
int nfcl_caser_tensor(const nfcl_caser_config *c,int k,nfcl_tensor_info *o){return 5;}
int64_t nfcl_caser_num_params(const nfcl_caser_config *c){return 0;}
int64_t nfcl_caser_acts_size(const nfcl_caser_config *c,int B,int T){return 0;}
int64_t nfcl_caser_scratch_size(const nfcl_caser_config *c,int B,int T){return 0;}
int nfcl_caser_init(const nfcl_caser_config *c,float *p,uint64_t s){return NFCL_E_ARG;}
int nfcl_caser_forward(const nfcl_caser_config *c,const float *p,float *a,const int32_t *i,int B,int T,uint64_t s,uint64_t st,int tr,float *q){return 5;}
int nfcl_caser_backward(const nfcl_caser_config *c,const float *p,float *g,const float *a,float *sc,const int32_t *i,int B,int T,uint64_t s,uint64_t st,int tr,const float *dq,nfcl_rowset *rs){return 5;}
